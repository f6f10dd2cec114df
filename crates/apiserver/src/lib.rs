//! vmo's API server: Kubernetes-style REST over HTTPS on top of a `Store`.
//!
//! `service` holds the resource semantics, `watch` the event streams, `server` the HTTP front,
//! `discovery` and `openapi` what kubectl reads to learn the kinds, `pki` and `auth` who may talk.

mod admission;
pub mod agent_proxy;
pub mod auth;
pub mod console;
pub mod discovery;
pub mod extension;
pub mod lifecycle;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod routes;
pub mod server;
pub mod service;
pub mod ui;
pub mod upload;
pub mod watch;

pub use auth::Authenticator;
pub use pki::Pki;
pub use server::{ApiServer, ServerSettings};
pub use service::ResourceService;
