//! Dependency order of stages: Kahn's algorithm with ties broken by name, so the order
//! is the same on every run; unknown tables and cycles are errors naming the files.

use std::collections::{BTreeMap, BTreeSet};

use super::{Project, TransformError};

/// Closest name to `wanted` among `known`, when it is close enough to be a likely typo.
pub fn suggest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(wanted, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min()
        .map(|(_, k)| k.to_string())
}

/// Tables and functions that become available when a stage has run (the fitted models
/// appear after their input stage): name to the stage that provides it.
pub type Provided = BTreeMap<String, String>;

/// The stages `stage` must run after: the stages it reads, and the providers of what it
/// reads or calls.
pub fn dependencies<'a>(project: &'a Project, provided: &'a Provided, stage: &'a super::Stage) -> BTreeSet<&'a str> {
    let read_stages = stage
        .reads
        .iter()
        .filter(|t| project.stages.contains_key(*t))
        .map(String::as_str);
    let providers = stage
        .reads
        .iter()
        .chain(&stage.calls)
        .filter_map(|name| provided.get(name).map(String::as_str));
    read_stages.chain(providers).filter(|dep| *dep != stage.name).collect()
}

/// The stages that must be available for the `chosen` stages to run: every stage (or
/// provider of a function or table) a chosen stage reads, and, since views are computed
/// on read, whatever those views read in turn. Stored tables end the walk: they can be
/// read as published.
pub fn upstream(project: &Project, provided: &Provided, chosen: &BTreeSet<String>) -> BTreeSet<String> {
    use super::spec::Materialized;
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = chosen.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        let Some(stage) = project.stages.get(name) else {
            continue;
        };
        for dep in dependencies(project, provided, stage) {
            let is_view = project
                .stages
                .get(dep)
                .is_some_and(|s| s.spec.materialized == Materialized::View);
            if seen.insert(dep.to_string()) && is_view {
                todo.push(dep);
            }
        }
    }
    seen
}

/// `order` (an [`execution_order`]) cut into waves: a stage's wave comes after the waves of
/// every stage it depends on, and as early as that allows. The stages of one wave do not
/// depend on each other, so they can run at the same time; within a wave they keep their
/// order in `order`.
pub fn waves(project: &Project, provided: &Provided, order: &[String]) -> Vec<Vec<String>> {
    let mut wave_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut waves: Vec<Vec<String>> = Vec::new();
    for name in order {
        let wave = project.stages.get(name).map_or(0, |stage| {
            dependencies(project, provided, stage)
                .iter()
                .filter_map(|dep| wave_of.get(dep).map(|w| w + 1))
                .max()
                .unwrap_or(0)
        });
        wave_of.insert(name, wave);
        if waves.len() <= wave {
            waves.resize(wave + 1, Vec::new());
        }
        waves[wave].push(name.clone());
    }
    waves
}

/// The order to run the stages in; `external` are tables that exist before any stage runs
/// (extracted sources, and anything else registered by patron); `provided` are tables and
/// functions that appear after a given stage has run.
pub fn execution_order(
    project: &Project,
    external: &BTreeSet<String>,
    provided: &Provided,
) -> Result<Vec<String>, TransformError> {
    // Check every read resolves, and every provider exists.
    for stage in project.stages.values() {
        for (name, provider) in provided {
            if (stage.reads.contains(name) || stage.calls.contains(name)) && !project.stages.contains_key(provider) {
                return Err(TransformError::MissingProvider {
                    path: stage.path.clone(),
                    name: name.clone(),
                    provider: provider.clone(),
                });
            }
        }
        for table in &stage.reads {
            if !(project.stages.contains_key(table)
                || project.seeds.contains_key(table)
                || external.contains(table)
                || provided.contains_key(table))
            {
                let known = project
                    .stages
                    .keys()
                    .chain(project.seeds.keys())
                    .chain(external.iter())
                    .map(String::as_str);
                return Err(TransformError::UnknownTable {
                    path: stage.path.clone(),
                    table: table.clone(),
                    suggestion: suggest(table, known),
                });
            }
        }
    }
    let mut pending: BTreeMap<&str, BTreeSet<&str>> = project
        .stages
        .values()
        .map(|s| (s.name.as_str(), dependencies(project, provided, s)))
        .collect();
    let mut order = Vec::with_capacity(pending.len());
    loop {
        let ready: Vec<&str> = pending
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
            .collect();
        let Some(next) = ready.first().copied() else {
            break;
        };
        pending.remove(next);
        for deps in pending.values_mut() {
            deps.remove(next);
        }
        order.push(next.to_string());
    }
    if pending.is_empty() {
        return Ok(order);
    }
    // Walk from any blocked stage along unresolved dependencies until a stage repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut at = *pending.keys().next().unwrap_or(&"");
    while !path.contains(&at) {
        path.push(at);
        at = pending.get(at).and_then(|d| d.iter().next().copied()).unwrap_or(at);
    }
    let start = path.iter().position(|p| *p == at).unwrap_or(0);
    let mut files: Vec<_> = path[start..]
        .iter()
        .filter_map(|n| project.stages.get(*n).map(|s| s.path.clone()))
        .collect();
    if let Some(first) = files.first().cloned() {
        files.push(first);
    }
    Err(TransformError::Cycle { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Stage;
    use std::path::PathBuf;

    fn project(stages: &[(&str, &[&str])]) -> Project {
        let mut p = Project::default();
        for (name, reads) in stages {
            p.stages.insert(
                name.to_string(),
                Stage {
                    name: name.to_string(),
                    path: PathBuf::from(format!("sql/{name}.sql")),
                    layer: String::new(),
                    sql: String::new(),
                    reads: reads.iter().map(|s| s.to_string()).collect(),
                    calls: vec![],
                    spec: Default::default(),
                },
            );
        }
        p
    }

    #[test]
    fn stages_run_after_what_they_read() {
        let p = project(&[("c", &["b"]), ("b", &["a", "raw_x"]), ("a", &["raw_x"]), ("d", &[])]);
        let ext = BTreeSet::from(["raw_x".to_string()]);
        assert_eq!(
            execution_order(&p, &ext, &Provided::new()).unwrap(),
            vec!["a", "b", "c", "d"]
        );
    }

    #[test]
    fn waves_hold_stages_that_do_not_depend_on_each_other() {
        let mut p = project(&[
            ("stg_a", &["raw_x"]),
            ("stg_b", &["raw_x"]),
            ("fct", &["stg_a", "stg_b"]),
            ("input", &["stg_b"]),
            ("scores", &["fct"]),
            ("lone", &[]),
        ]);
        let mut provided = Provided::new();
        provided.insert("model_fn".into(), "input".into());
        p.stages.get_mut("scores").unwrap().calls = vec!["model_fn".into()];
        let ext = BTreeSet::from(["raw_x".to_string()]);
        let order = execution_order(&p, &ext, &provided).unwrap();
        let waves = waves(&p, &provided, &order);
        assert_eq!(
            waves,
            vec![vec!["lone", "stg_a", "stg_b"], vec!["fct", "input"], vec!["scores"],]
        );
        // Every stage's dependencies are in earlier waves.
        for (i, wave) in waves.iter().enumerate() {
            for name in wave {
                for dep in dependencies(&p, &provided, &p.stages[name]) {
                    let at = waves.iter().position(|w| w.iter().any(|n| n == dep)).unwrap();
                    assert!(at < i, "{name} in wave {i} depends on {dep} in wave {at}");
                }
            }
        }
    }

    #[test]
    fn a_cycle_names_its_files() {
        let p = project(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("z", &[])]);
        let e = execution_order(&p, &BTreeSet::new(), &Provided::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sql/a.sql") && e.contains("sql/b.sql") && e.contains("sql/c.sql"),
            "{e}"
        );
        assert!(!e.contains("z.sql"), "{e}");
    }

    #[test]
    fn unknown_table_suggests_the_closest_name() {
        let p = project(&[("fct_customer", &["stg_sale"]), ("stg_sales", &[])]);
        let e = execution_order(&p, &BTreeSet::new(), &Provided::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fct_customer.sql") && e.contains("`stg_sale`") && e.contains("did you mean `stg_sales`"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod provided_tests {
    use super::*;
    use crate::transform::Stage;
    use std::path::PathBuf;

    fn stage(name: &str, reads: &[&str], calls: &[&str]) -> Stage {
        Stage {
            name: name.into(),
            path: PathBuf::from(format!("sql/{name}.sql")),
            layer: String::new(),
            sql: String::new(),
            reads: reads.iter().map(|s| s.to_string()).collect(),
            calls: calls.iter().map(|s| s.to_string()).collect(),
            spec: Default::default(),
        }
    }

    #[test]
    fn calling_a_model_function_runs_after_the_model_input() {
        let mut p = Project::default();
        for s in [
            stage("a_scores", &["fct"], &["bgnbd_p_alive"]),
            stage("model_input", &["fct"], &[]),
            stage("b_params", &["model_params"], &[]),
            stage("fct", &[], &[]),
        ] {
            p.stages.insert(s.name.clone(), s);
        }
        let provided = Provided::from([
            ("bgnbd_p_alive".to_string(), "model_input".to_string()),
            ("model_params".to_string(), "model_input".to_string()),
        ]);
        let order = execution_order(&p, &BTreeSet::new(), &provided).unwrap();
        assert_eq!(order, vec!["fct", "model_input", "a_scores", "b_params"]);
        p.stages.remove("model_input");
        let e = execution_order(&p, &BTreeSet::new(), &provided)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a_scores.sql") && e.contains("model_input"), "{e}");
    }
}
