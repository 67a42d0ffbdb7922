//! The ADT compiler: MiCADO TOSCA YAML in, a typed deployment [`plan::Plan`] out.

pub mod diagnostics;
pub mod plan;
pub mod quantity;
pub mod templating;
pub mod types;
pub mod yaml;
