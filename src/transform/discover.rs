//! Finding stages and seeds under the SQL folder and the tables each stage reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::ast::{Expr, Statement, visit_expressions};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use std::ops::ControlFlow;

use super::TransformError;
use super::spec::{DataTest, Severity, StageSpec, TestKind, load_spec};
use crate::config::{collect_files, is_identifier};

/// Subfolder of the SQL folder reserved for data tests; its files are not stages.
pub const TESTS_DIR: &str = "tests";

/// One SQL stage: a SELECT whose result becomes the table `name`.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Table name (the file stem).
    pub name: String,
    /// The `.sql` file.
    pub path: PathBuf,
    /// Folder under the SQL folder (`staging`, `marts`, `scoring`, ...); empty at the top.
    pub layer: String,
    /// The query text.
    pub sql: String,
    /// Tables the query reads (after removing its own CTE names), sorted.
    pub reads: Vec<String>,
    /// Functions the query calls (lower case), sorted.
    pub calls: Vec<String>,
    /// Header settings, descriptions and data tests.
    pub spec: StageSpec,
}

/// A seed: a CSV file under the SQL folder, loaded as the table `name`.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Table name (the file stem).
    pub name: String,
    /// The `.csv` file.
    pub path: PathBuf,
}

/// Everything under the SQL folder.
#[derive(Debug, Clone, Default)]
pub struct Project {
    /// Stages by name.
    pub stages: BTreeMap<String, Stage>,
    /// Seeds by name.
    pub seeds: BTreeMap<String, Seed>,
    /// Singular data tests: queries under `sql/tests/` returning failing rows.
    pub singular_tests: Vec<DataTest>,
}

/// What a stage's query refers to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct References {
    /// Tables read (CTE names excluded), sorted.
    pub tables: Vec<String>,
    /// Functions called, lower case, sorted.
    pub functions: Vec<String>,
}

/// Finds the tables a query reads and the functions it calls, using DataFusion's parser;
/// CTE names are not tables.
pub fn references(path: &Path, sql: &str) -> Result<References, TransformError> {
    let parse_err = |message: String| TransformError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| parse_err(e.to_string()))?;
    if statements.len() != 1 {
        return Err(parse_err(format!(
            "expected exactly one SELECT statement, found {}",
            statements.len()
        )));
    }
    let statement = statements.pop_front().ok_or_else(|| parse_err("empty file".into()))?;
    if !matches!(&statement, DfStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_))) {
        return Err(parse_err(
            "a stage must be one SELECT (or WITH ... SELECT) query; patron materialises the result itself".into(),
        ));
    }
    let (tables, _ctes) = resolve_table_references(&statement, true).map_err(|e| parse_err(e.to_string()))?;
    let mut names: Vec<String> = tables
        .into_iter()
        .filter(|t| t.schema().is_none_or(|s| s != "information_schema"))
        .map(|t| t.table().to_string())
        .collect();
    names.sort();
    names.dedup();
    let mut functions = Vec::new();
    if let DfStatement::Statement(inner) = &statement {
        let _ = visit_expressions(inner.as_ref(), |expr| {
            if let Expr::Function(f) = expr {
                functions.push(f.name.to_string().to_lowercase());
            }
            ControlFlow::<()>::Continue(())
        });
    }
    functions.sort();
    functions.dedup();
    Ok(References {
        tables: names,
        functions,
    })
}

impl Project {
    /// Adds a view that patron generates rather than reads from a file (a source's
    /// `raw_<source>_current`): table `name`, computed by `sql`, listed under `layer`, and
    /// named in errors by `origin`, the file it is generated from. A stage or seed of the
    /// same name is an error.
    pub fn add_generated(
        &mut self,
        name: &str,
        layer: &str,
        origin: &Path,
        sql: String,
        description: String,
    ) -> Result<(), TransformError> {
        let first = self
            .stages
            .get(name)
            .map(|s| s.path.clone())
            .or_else(|| self.seeds.get(name).map(|s| s.path.clone()));
        if let Some(first) = first {
            return Err(TransformError::Duplicate {
                name: name.to_string(),
                first,
                second: origin.to_path_buf(),
            });
        }
        let refs = references(origin, &sql)?;
        let spec = StageSpec {
            description: Some(description),
            materialized: super::spec::Materialized::View,
            ..StageSpec::default()
        };
        let stage = Stage {
            name: name.to_string(),
            path: origin.to_path_buf(),
            layer: layer.to_string(),
            sql,
            reads: refs.tables,
            calls: refs.functions,
            spec,
        };
        self.stages.insert(name.to_string(), stage);
        Ok(())
    }
}

/// Discovers every stage and seed under `sql_dir`.
pub fn discover(sql_dir: &Path) -> Result<Project, TransformError> {
    if !sql_dir.is_dir() {
        return Err(TransformError::Read {
            path: sql_dir.to_path_buf(),
            message: "not a folder".into(),
        });
    }
    let mut files = Vec::new();
    collect_files(sql_dir, &mut files);
    files.sort();
    let mut project = Project::default();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(sql_dir).unwrap_or(&path).to_path_buf();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if rel.starts_with(TESTS_DIR) {
            if ext == "sql" {
                let sql = std::fs::read_to_string(&path).map_err(|e| TransformError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                references(&path, &sql)?;
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
                project.singular_tests.push(DataTest {
                    table: String::new(),
                    name,
                    kind: TestKind::Singular { sql },
                    severity: Severity::Error,
                    file: path,
                });
            }
            continue;
        }
        if !(ext == "sql" || ext == "csv") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        if !is_identifier(&name) {
            return Err(TransformError::BadName { path, name });
        }
        if let Some(first) = seen.get(&name) {
            return Err(TransformError::Duplicate {
                name,
                first: first.clone(),
                second: path,
            });
        }
        seen.insert(name.clone(), path.clone());
        if ext == "csv" {
            project.seeds.insert(name.clone(), Seed { name, path });
            continue;
        }
        let sql = std::fs::read_to_string(&path).map_err(|e| TransformError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let refs = references(&path, &sql)?;
        let spec = load_spec(&name, &path, &sql)?;
        let layer = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        project.stages.insert(
            name.clone(),
            Stage {
                name,
                path,
                layer,
                sql,
                reads: refs.tables,
                calls: refs.functions,
                spec,
            },
        );
    }
    Ok(project)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctes_are_not_dependencies_and_functions_are_found() {
        let r = references(
            Path::new("x.sql"),
            "WITH a AS (SELECT * FROM stg_sales) SELECT BGNBD_P_ALIVE(x, 1, 2), upper(y) FROM a JOIN dim_x USING (id)",
        )
        .unwrap();
        assert_eq!(r.tables, vec!["dim_x", "stg_sales"]);
        assert_eq!(r.functions, vec!["bgnbd_p_alive", "upper"]);
    }

    #[test]
    fn only_one_select_is_a_stage() {
        let e = references(Path::new("x.sql"), "DROP TABLE t").unwrap_err().to_string();
        assert!(e.contains("x.sql") && e.contains("SELECT"), "{e}");
        let e = references(Path::new("y.sql"), "SELECT 1; SELECT 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("y.sql") && e.contains("found 2"), "{e}");
    }
}
