//! Sources: where records come from.

pub mod demo;
pub mod file;
pub mod kafka;
pub mod redis_stream;
pub mod stdin;
pub mod util;
