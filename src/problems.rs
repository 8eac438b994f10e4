//! Configuration problems: every settings section validates itself into one
//! [`Problems`] list, so a pipeline file with several mistakes reports them all at once.
//! A module of its own, below every settings type, so that the settings types need not
//! import the configuration that gathers them.

/// One configuration problem: the dotted key and what is wrong with it.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Dotted key such as `sources[1].format`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Collects problems while a section validates itself.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems recorded, in order.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// Records a problem unless `lo <= value <= hi`.
    pub fn check_range(&mut self, key: &str, value: f64, lo: f64, hi: f64) {
        if !(lo..=hi).contains(&value) {
            self.push(key, format!("{value} is out of range [{lo}, {hi}]"));
        }
    }
}
