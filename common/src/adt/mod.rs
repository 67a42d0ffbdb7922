//! The ADT compiler: MiCADO TOSCA YAML in, a typed deployment [`plan::Plan`] out.
//!
//! `yaml` parses into a positioned tree within hard limits; `types` holds the
//! type library; `inputs` resolves `get_input`; `compile` walks the topology,
//! handing containers to `containers` and policies to `policies`. Every pass
//! records problems in `diagnostics` and carries on.

mod compile;
mod containers;
pub mod diagnostics;
mod inputs;
pub mod plan;
mod policies;
pub mod probes;
mod props;
pub mod quantity;
pub mod templating;
pub mod types;
pub mod yaml;

pub use compile::{compile, CompileOptions, ImportReader, MAX_INSTANCE_COUNT};
pub use diagnostics::{CompileError, Diagnostic};
pub use inputs::declared_input_names;
pub use plan::Plan;
