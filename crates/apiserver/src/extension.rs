//! Subresources served by code outside the API server, at
//! `/apis/subresources.vmo.io/v1/[namespaces/NS/]PLURAL/NAME/SUBRESOURCE`: actions that need what
//! the controllers know (a node's drain plan) while the server stays a store of objects. `vmo up`
//! registers them once its in-process client exists; an unregistered one answers 404.

use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use vmo_api::Status;

/// The API group of vmo's own action subresources.
pub const GROUP: &str = "subresources.vmo.io";

/// One request to an extension.
#[derive(Debug, Clone)]
pub struct ExtensionCall {
    pub method: http::Method,
    pub namespace: Option<String>,
    pub name: String,
    /// `?dryRun=All`: report what would happen, change nothing.
    pub dry_run: bool,
    /// The request's JSON body (`null` when empty).
    pub body: Value,
}

/// What an extension answers: a JSON body (200) or a Status.
pub type ExtensionFuture = Pin<Box<dyn Future<Output = Result<Value, Status>> + Send>>;

/// A subresource `PLURAL/NAME/SUBRESOURCE` in [`GROUP`].
pub trait Extension: Send + Sync + std::fmt::Debug {
    /// The resource (`nodes`) and subresource (`drain`) it serves.
    fn path(&self) -> (&'static str, &'static str);
    /// Answers one request (the user's token was checked before).
    fn call(&self, call: ExtensionCall) -> ExtensionFuture;
}
