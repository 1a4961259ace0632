//! The policy: YAML file → typed, validated [`Config`].
//!
//! - [`model`]: the schema (one struct per section, defaults with their reasons);
//! - [`types`]: value types (durations, sizes, CIDR blocks, ports, service references);
//! - [`validate`]: cross-field checks;
//! - [`load`]: reading, environment overrides, errors naming file, line, column and field.
//!
//! The decisions taken on a valid policy are in [`crate::policy`].

pub mod load;
pub mod model;
pub mod types;
pub mod validate;

pub use load::{
    ConfigError, ENV_OVERRIDES, Env, EnvOverride, Loaded, Origin, Problem, ProcessEnv, Secrets,
    load_file, parse, parse_file, preflight,
};
pub use model::{Config, Role};

#[cfg(test)]
mod tests;
