//! Stage selection like dbt: `--select fct_customer`, `+fct_customer` (with everything
//! upstream), `stg_sales+` (with everything downstream), `+name+`, `tag:daily`,
//! `layer:marts`, several selectors separated by spaces or commas (union), and `--exclude`
//! with the same syntax.

use std::collections::{BTreeMap, BTreeSet};

use super::dag::{Provided, dependencies, suggest};
use super::{Project, TransformError};

/// Upstream stages of every stage (direct dependencies).
fn upstream_map<'a>(project: &'a Project, provided: &'a Provided) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    project
        .stages
        .values()
        .map(|s| (s.name.as_str(), dependencies(project, provided, s)))
        .collect()
}

fn closure<'a>(start: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, out: &mut BTreeSet<String>) {
    let mut todo = vec![start];
    while let Some(n) = todo.pop() {
        for next in edges.get(n).into_iter().flatten() {
            if out.insert(next.to_string()) {
                todo.push(next);
            }
        }
    }
}

/// The stages one selector expression (space/comma separated selectors) picks.
fn pick(project: &Project, provided: &Provided, expr: &str) -> Result<BTreeSet<String>, TransformError> {
    let up = upstream_map(project, provided);
    let mut down: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (stage, deps) in &up {
        for d in deps {
            down.entry(*d).or_default().insert(*stage);
        }
    }
    let mut picked = BTreeSet::new();
    for selector in expr.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |message: String| TransformError::Selection {
            selector: selector.to_string(),
            message,
        };
        if let Some(tag) = selector.strip_prefix("tag:") {
            let n = picked.len();
            picked.extend(
                project
                    .stages
                    .values()
                    .filter(|s| s.spec.tags.iter().any(|t| t == tag))
                    .map(|s| s.name.clone()),
            );
            if picked.len() == n && !project.stages.values().any(|s| s.spec.tags.iter().any(|t| t == tag)) {
                return Err(bad(format!("no stage has the tag `{tag}`")));
            }
            continue;
        }
        if let Some(layer) = selector.strip_prefix("layer:") {
            let stages: Vec<_> = project
                .stages
                .values()
                .filter(|s| s.layer == layer)
                .map(|s| s.name.clone())
                .collect();
            if stages.is_empty() {
                return Err(bad(format!("no stage is in the layer `{layer}`")));
            }
            picked.extend(stages);
            continue;
        }
        let with_up = selector.starts_with('+');
        let with_down = selector.ends_with('+');
        let name = selector.trim_start_matches('+').trim_end_matches('+');
        let Some(stage) = project.stages.get(name) else {
            let hint = suggest(name, project.stages.keys().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            return Err(bad(format!("no stage named `{name}`{hint}")));
        };
        picked.insert(stage.name.clone());
        if with_up {
            closure(&stage.name, &up, &mut picked);
        }
        if with_down {
            closure(&stage.name, &down, &mut picked);
        }
    }
    Ok(picked)
}

/// The selected stages: everything when `select` is empty, minus what `exclude` picks.
pub fn select(
    project: &Project,
    provided: &Provided,
    select: &[String],
    exclude: &[String],
) -> Result<BTreeSet<String>, TransformError> {
    let mut chosen = if select.is_empty() {
        project.stages.keys().cloned().collect()
    } else {
        let mut all = BTreeSet::new();
        for s in select {
            all.extend(pick(project, provided, s)?);
        }
        all
    };
    for e in exclude {
        for name in pick(project, provided, e)? {
            chosen.remove(&name);
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Stage;
    use std::path::PathBuf;

    fn project() -> Project {
        let mut p = Project::default();
        for (name, layer, reads, tags) in [
            ("stg_a", "staging", vec![], vec!["daily"]),
            ("stg_b", "staging", vec![], vec![]),
            ("fct", "marts", vec!["stg_a", "stg_b"], vec!["daily"]),
            ("scores", "scoring", vec!["fct"], vec![]),
            ("other", "marts", vec!["stg_b"], vec![]),
        ] {
            let spec = crate::transform::spec::StageSpec {
                tags: tags.into_iter().map(String::from).collect(),
                ..Default::default()
            };
            p.stages.insert(
                name.into(),
                Stage {
                    name: name.into(),
                    path: PathBuf::from(format!("sql/{layer}/{name}.sql")),
                    layer: layer.into(),
                    sql: String::new(),
                    reads: reads.into_iter().map(String::from).collect(),
                    calls: vec![],
                    spec,
                },
            );
        }
        p
    }

    fn sel(select: &[&str], exclude: &[&str]) -> Vec<String> {
        let s: Vec<String> = select.iter().map(|s| s.to_string()).collect();
        let e: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        super::select(&project(), &Provided::new(), &s, &e)
            .unwrap()
            .into_iter()
            .collect()
    }

    #[test]
    fn selectors_pick_like_dbt() {
        assert_eq!(sel(&["fct"], &[]), vec!["fct"]);
        assert_eq!(sel(&["+fct"], &[]), vec!["fct", "stg_a", "stg_b"]);
        assert_eq!(sel(&["stg_b+"], &[]), vec!["fct", "other", "scores", "stg_b"]);
        assert_eq!(sel(&["tag:daily"], &[]), vec!["fct", "stg_a"]);
        assert_eq!(sel(&["layer:staging", "scores"], &[]), vec!["scores", "stg_a", "stg_b"]);
        assert_eq!(sel(&["+scores"], &["stg_a, stg_b"]), vec!["fct", "scores"]);
        assert_eq!(sel(&[], &["layer:marts"]).len(), 3);
    }

    #[test]
    fn an_unknown_name_suggests_the_closest() {
        let e = super::select(&project(), &Provided::new(), &["fc".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fc`") && e.contains("did you mean `fct`"), "{e}");
    }
}
