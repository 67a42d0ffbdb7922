//! The ADT compiler: MiCADO TOSCA YAML in, a typed deployment [`plan::Plan`] out.

pub mod yaml;
