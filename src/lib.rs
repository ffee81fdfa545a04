//! echoloop: a TCP echo server on one hand-written mio readiness loop.
#![deny(missing_docs)]

pub mod config;
pub mod connection;
pub mod server;
pub mod token;

pub use config::Config;
pub use connection::{Connection, HalfClose, Limits, Progress, Scratch};
pub use server::{EchoServer, Stats};
pub use token::TOKEN_SPAN;
