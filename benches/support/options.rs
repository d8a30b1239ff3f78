//! The benches' options: each a flag (`--epochs 2`) or an environment variable
//! (`MOCO_QUALITY_EPOCHS=2`), the flag winning, else the bench's default.
pub struct Settings {
    argv: Vec<String>,
}

impl Settings {
    /// The process's own arguments.
    pub fn from_args() -> Settings {
        Settings {
            argv: std::env::args().skip(1).collect(),
        }
    }

    /// A flag's value, else the environment variable's (when not blank).
    pub fn get(&self, flag: &str, env: &str) -> Option<String> {
        self.argv
            .iter()
            .position(|a| a == flag)
            .map(|i| {
                self.argv
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("{flag} needs a value"))
                    .clone()
            })
            .or_else(|| std::env::var(env).ok().filter(|v| !v.trim().is_empty()))
    }

    /// A whole number, `default` when neither is given; anything else stops the bench naming
    /// the flag.
    pub fn number(&self, flag: &str, env: &str, default: usize) -> usize {
        self.get(flag, env).map_or(default, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{flag} / {env}: {v:?} is not a number"))
        })
    }
}
