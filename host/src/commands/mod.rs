//! One module per subcommand: its clap arguments and its `run`.

pub mod bench;
pub mod build;
pub mod call;
pub mod calls;
pub mod completions;
pub mod delete;
pub mod deploy;
pub mod dev;
pub mod env;
pub mod functions;
pub mod gc;
pub mod invoke;
pub mod logs;
pub mod new;
pub mod pack;
pub mod pools;
pub mod route;
pub mod runtimes;
pub mod serve;
pub mod status;
pub mod versions;
