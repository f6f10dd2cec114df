//! vmo's API types and rules, with no I/O: objects and metadata, the kind registry, validation,
//! resource quantities, selectors, patches and server-side apply, and request decoding.

pub mod decode;
pub mod fieldset;
pub mod kinds;
pub mod meta;
pub mod object;
pub mod patch;
pub mod quantity;
pub mod secrets;
pub mod selector;
pub mod status;
pub mod table;
pub mod validation;

pub use kinds::{KindInfo, Registry};
pub use meta::ObjectMeta;
pub use object::{Object, ObjectList, WatchEvent};
pub use quantity::Quantity;
pub use status::{FieldError, Status};
