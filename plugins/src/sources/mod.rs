//! Sources: where records come from.

pub mod demo;
pub mod file;
pub mod stdin;
pub mod util;
