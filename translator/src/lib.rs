//! The Serval translator (library half of the `serval-translator` binary).
//!
//! Today it holds the `service-id` tool and the demo; the client-side translator,
//! server-side translator and service-router roles land on top of `serval-stack`'s driver.

#![cfg_attr(not(test), warn(missing_docs))]

pub mod demo;
pub mod ids;
