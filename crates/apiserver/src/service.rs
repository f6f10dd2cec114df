//! The resource service: Kubernetes semantics on top of the store, independent of HTTP.
//!
//! It owns what every kind shares: keys, resourceVersions, uids and timestamps; validation; the status
//! subresource (spec and status written separately, generation bumped only by spec changes); patches
//! and server-side apply; finalizers and deletion with propagation policies; and namespace rules.

use serde_json::Value;
use std::sync::Arc;
use vmo_api::fieldset::Scope;
use vmo_api::kinds::core::NAMESPACE_FINALIZER;
use vmo_api::meta::{now_rfc3339, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use vmo_api::patch::{self, PatchKind};
use vmo_api::selector::{FieldSelector, LabelSelector};
use vmo_api::{validation, FieldError, KindInfo, Object, Registry, Status};
use vmo_store::{KeyValue, Op, Revision, Store, StoreError};

/// How many times a patch is retried when another writer changed the object in between.
const PATCH_RETRIES: usize = 8;
/// Characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Options shared by writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Validate and compute the result, but store nothing (`dryRun=All`).
    pub dry_run: bool,
    /// Who is writing, for managed fields (`fieldManager`).
    pub field_manager: String,
    /// Take over conflicting fields in server-side apply (`force=true`).
    pub force: bool,
}

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// The owner goes now; the garbage collector deletes dependents afterwards.
    #[default]
    Background,
    /// The owner stays (with a finalizer) until its dependents are gone.
    Foreground,
    /// Dependents lose their owner reference and stay.
    Orphan,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// A page of objects.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Object>,
    pub resource_version: Revision,
    pub continue_token: String,
}

/// How a write records field ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ownership {
    /// The writer's changed fields become its own (create, update, merge and JSON patches).
    Track,
    /// Server-side apply already computed `managedFields` on the incoming object.
    Applied,
}

/// Kubernetes resource semantics over a store.
#[derive(Clone)]
pub struct ResourceService {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for ResourceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceService").finish_non_exhaustive()
    }
}

/// Maps store failures to API statuses.
pub fn store_status(kind: &KindInfo, name: &str, e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists { .. } => Status::already_exists(&kind.resource_name(), name),
        StoreError::NotFound { .. } => Status::not_found(&kind.resource_name(), name),
        StoreError::Conflict { .. } => Status::conflict(
            &kind.resource_name(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Compacted {
            requested,
            compacted,
        } => Status::gone(format!(
            "too old resource version: {requested} ({compacted})"
        )),
        StoreError::FutureRevision { requested, current } => Status::failure(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        ),
        other => Status::internal(other.to_string()),
    }
}

/// The store key prefix of a kind, optionally narrowed to one namespace.
pub fn prefix(kind: &KindInfo, namespace: Option<&str>) -> String {
    let group = if kind.group.is_empty() {
        "core"
    } else {
        kind.group
    };
    match namespace {
        Some(ns) if kind.namespaced => format!("/registry/{group}/{}/{ns}/", kind.plural),
        _ => format!("/registry/{group}/{}/", kind.plural),
    }
}

/// The store key of one object.
pub fn key(kind: &KindInfo, namespace: &str, name: &str) -> String {
    format!("{}{name}", prefix(kind, Some(namespace)))
}

/// Decodes a stored value, stamping its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Object, Status> {
    let mut obj: Object = serde_json::from_slice(&kv.value)
        .map_err(|e| Status::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    obj.metadata.resource_version = kv.mod_revision.to_string();
    Ok(obj)
}

fn encode(obj: &Object) -> Result<Vec<u8>, Status> {
    let mut stored = obj.clone();
    stored.metadata.resource_version.clear();
    serde_json::to_vec(&stored)
        .map_err(|e| Status::internal(format!("encoding {}: {e}", obj.display_name())))
}

fn random_bytes(buf: &mut [u8]) -> Result<(), Status> {
    getrandom::fill(buf).map_err(|e| Status::internal(format!("no randomness available: {e}")))
}

fn random_suffix(len: usize) -> Result<String, Status> {
    let mut bytes = vec![0u8; len];
    random_bytes(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char)
        .collect())
}

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> Result<String, Status> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Everything of an object except metadata and status: what a generation counts.
fn spec_part(obj: &Object) -> Value {
    let mut body = obj.body.clone();
    body.remove("status");
    Value::Object(body)
}

fn parse_revision(rv: &str) -> Result<Revision, Status> {
    rv.parse().map_err(|_| {
        Status::bad_request(format!("invalid resourceVersion {rv:?}: must be a number"))
    })
}

impl ResourceService {
    /// A service over `store` serving `registry`'s kinds.
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Self { store, registry }
    }

    /// The kinds served.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Creates `default` and the system namespaces if missing.
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), Status> {
        let kind = *self
            .registry
            .resolve("namespaces")
            .expect("namespaces are registered");
        if self.get(&kind, "", name).await.is_ok() {
            return Ok(());
        }
        let ns = Object::new("v1", "Namespace", "", name).to_value();
        match self.create(&kind, "", ns, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(s) if s.code == 409 => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Reads one object.
    pub async fn get(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<Object, Status> {
        let kv = self
            .store
            .get(&key(kind, namespace, name))
            .await
            .map_err(|e| store_status(kind, name, e))?
            .ok_or_else(|| Status::not_found(&kind.resource_name(), name))?;
        decode(&kv)
    }

    async fn get_with_revision(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
    ) -> Result<(Object, Revision), Status> {
        let kv = self
            .store
            .get(&key(kind, namespace, name))
            .await
            .map_err(|e| store_status(kind, name, e))?
            .ok_or_else(|| Status::not_found(&kind.resource_name(), name))?;
        Ok((decode(&kv)?, kv.mod_revision))
    }

    /// Checks that a field selector names only fields the kind supports.
    pub fn check_field_selector(
        &self,
        kind: &KindInfo,
        selector: &FieldSelector,
    ) -> Result<(), Status> {
        for r in &selector.requirements {
            if !kind.selectable(&r.field) {
                return Err(Status::bad_request(format!(
                    "field label not supported: {} (supported: metadata.name, metadata.namespace{})",
                    r.field,
                    kind.field_selectors
                        .iter()
                        .map(|f| format!(", {f}"))
                        .collect::<String>()
                )));
            }
        }
        Ok(())
    }

    /// True when the object passes both selectors.
    pub fn selected(obj: &Object, opts: &ListOptions) -> bool {
        opts.label_selector.matches(&obj.metadata.labels)
            && opts.field_selector.matches(|f| match f {
                "metadata.name" => Some(obj.metadata.name.clone()),
                "metadata.namespace" => Some(obj.metadata.namespace.clone()),
                other => obj.field_string(other),
            })
    }

    /// Lists objects of a kind (in one namespace, or all), filtered and paginated.
    ///
    /// Every page reports the first page's revision, so a watch started from it replays whatever
    /// changed while the pages were read; a token older than the kept history answers 410.
    pub async fn list(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, Status> {
        self.check_field_selector(kind, &opts.field_selector)?;
        let prefix = prefix(kind, namespace);
        let (mut start_after, mut first_revision) = match &opts.continue_token {
            Some(token) => {
                let (revision, key) = decode_continue(token, &prefix)?;
                let compacted = self
                    .store
                    .compacted_revision()
                    .await
                    .map_err(|e| store_status(kind, "", e))?;
                if revision < compacted {
                    return Err(Status::gone(
                        "the provided continue parameter is too old; list again without it",
                    ));
                }
                (Some(key), Some(revision))
            }
            None => (None, None),
        };
        let mut items = Vec::new();
        let want = opts.limit.unwrap_or(usize::MAX);
        loop {
            let page_size = (want != usize::MAX).then(|| (want - items.len()).max(50));
            let page = self
                .store
                .list(&prefix, start_after.as_deref(), page_size)
                .await
                .map_err(|e| store_status(kind, "", e))?;
            let revision = *first_revision.get_or_insert(page.revision);
            for (i, kv) in page.items.iter().enumerate() {
                let obj = decode(kv)?;
                if !Self::selected(&obj, opts) {
                    continue;
                }
                items.push(obj);
                if items.len() == want {
                    let more = page.more || i + 1 < page.items.len();
                    return Ok(ListPage {
                        items,
                        resource_version: revision,
                        continue_token: if more {
                            encode_continue(revision, &kv.key)
                        } else {
                            String::new()
                        },
                    });
                }
            }
            if !page.more {
                return Ok(ListPage {
                    items,
                    resource_version: revision,
                    continue_token: String::new(),
                });
            }
            start_after = page.items.last().map(|kv| kv.key.clone());
        }
    }

    fn check_namespace_field(
        kind: &KindInfo,
        obj: &mut Object,
        namespace: &str,
    ) -> Result<(), Status> {
        if !kind.namespaced {
            return Ok(());
        }
        if obj.metadata.namespace.is_empty() {
            obj.metadata.namespace = namespace.to_string();
        } else if !namespace.is_empty() && obj.metadata.namespace != namespace {
            return Err(Status::bad_request(format!(
                "the namespace of the provided object ({}) does not match the namespace sent on the request ({namespace})",
                obj.metadata.namespace
            )));
        }
        Ok(())
    }

    fn check_type(kind: &KindInfo, obj: &mut Object) -> Result<(), Status> {
        let api_version = kind.api_version();
        if obj.api_version.is_empty() {
            obj.api_version = api_version.clone();
        }
        if obj.kind.is_empty() {
            obj.kind = kind.kind.to_string();
        }
        if obj.api_version != api_version || obj.kind != kind.kind {
            return Err(Status::bad_request(format!(
                "the object is {} {}, but this endpoint serves {} {}",
                obj.api_version, obj.kind, api_version, kind.kind
            )));
        }
        Ok(())
    }

    fn validate(kind: &KindInfo, obj: &mut Object, old: Option<&Object>) -> Result<(), Status> {
        (kind.prepare)(obj);
        let mut errors =
            validation::object_meta(&obj.metadata, kind.namespaced, kind.name_is_label);
        if kind.namespaced && obj.metadata.namespace.is_empty() {
            errors.push(FieldError::required("metadata.namespace", ""));
        }
        errors.extend((kind.validate)(obj));
        if let Some(old) = old {
            errors.extend((kind.validate_update)(old, obj));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let name = if obj.metadata.name.is_empty() {
                obj.metadata.generate_name.clone()
            } else {
                obj.metadata.name.clone()
            };
            Err(Status::invalid(kind.kind, kind.group, &name, &errors))
        }
    }

    async fn check_namespace_usable(&self, kind: &KindInfo, namespace: &str) -> Result<(), Status> {
        if !kind.namespaced {
            return Ok(());
        }
        let ns_kind = *self
            .registry
            .resolve("namespaces")
            .expect("namespaces are registered");
        match self.get(&ns_kind, "", namespace).await {
            Ok(ns) if ns.metadata.deletion_timestamp.is_some() => Err(Status::failure(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            )),
            Ok(_) => Ok(()),
            Err(s) if s.code == 404 => Err(Status::not_found("namespaces", namespace)),
            Err(s) => Err(s),
        }
    }

    /// Creates an object; the body may omit apiVersion, kind and namespace.
    pub async fn create(
        &self,
        kind: &KindInfo,
        namespace: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Object, Status> {
        self.create_owned(kind, namespace, body, opts, Ownership::Track)
            .await
    }

    async fn create_owned(
        &self,
        kind: &KindInfo,
        namespace: &str,
        body: Value,
        opts: &WriteOptions,
        ownership: Ownership,
    ) -> Result<Object, Status> {
        let mut obj = Object::from_value(body)
            .map_err(|e| Status::bad_request(format!("the object has an invalid shape: {e}")))?;
        Self::check_type(kind, &mut obj)?;
        Self::check_namespace_field(kind, &mut obj, namespace)?;
        if !obj.metadata.resource_version.is_empty() {
            return Err(Status::invalid(
                kind.kind,
                kind.group,
                &obj.metadata.name,
                &[FieldError::invalid(
                    "metadata.resourceVersion",
                    &obj.metadata.resource_version,
                    "must be empty on create",
                )],
            ));
        }
        let generated = obj.metadata.name.is_empty() && !obj.metadata.generate_name.is_empty();
        for attempt in 0..5 {
            if generated {
                obj.metadata.name = format!("{}{}", obj.metadata.generate_name, random_suffix(5)?);
            }
            let mut candidate = obj.clone();
            Self::validate(kind, &mut candidate, None)?;
            self.check_namespace_usable(kind, &candidate.metadata.namespace)
                .await?;
            self.admit(kind, &candidate).await?;
            candidate.metadata.uid = new_uid()?;
            candidate.metadata.creation_timestamp = Some(now_rfc3339());
            candidate.metadata.generation = 1;
            candidate.metadata.deletion_timestamp = None;
            candidate.metadata.deletion_grace_period_seconds = None;
            if ownership == Ownership::Track {
                candidate.metadata.managed_fields.clear();
            }
            if kind.kind == "Namespace" {
                candidate.body.insert(
                    "spec".into(),
                    serde_json::json!({"finalizers": [NAMESPACE_FINALIZER]}),
                );
                candidate
                    .body
                    .insert("status".into(), serde_json::json!({"phase": "Active"}));
            } else if kind.status_subresource {
                candidate.body.remove("status");
            }
            let mut value = candidate.to_value();
            if ownership == Ownership::Track {
                patch::track_update(None, &mut value, manager(opts), Scope::Main);
            }
            let mut candidate =
                Object::from_value(value).map_err(|e| Status::internal(e.to_string()))?;
            if opts.dry_run {
                return Ok(candidate);
            }
            let op = Op::Create {
                key: key(
                    kind,
                    &candidate.metadata.namespace,
                    &candidate.metadata.name,
                ),
                value: encode(&candidate)?,
            };
            match self.store.commit(vec![op]).await {
                Ok(done) => {
                    candidate.metadata.resource_version = done.revision.to_string();
                    return Ok(candidate);
                }
                Err(StoreError::AlreadyExists { .. }) if generated && attempt < 4 => continue,
                Err(e) => return Err(store_status(kind, &candidate.metadata.name, e)),
            }
        }
        Err(Status::internal("could not generate a unique name"))
    }

    /// Replaces an object (`PUT`), or only its status when `scope` is `Status`.
    pub async fn update(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        body: Value,
        scope: Scope,
        opts: &WriteOptions,
    ) -> Result<Object, Status> {
        let mut obj = Object::from_value(body)
            .map_err(|e| Status::bad_request(format!("the object has an invalid shape: {e}")))?;
        Self::check_type(kind, &mut obj)?;
        Self::check_namespace_field(kind, &mut obj, namespace)?;
        if obj.metadata.name.is_empty() {
            obj.metadata.name = name.to_string();
        }
        if obj.metadata.name != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                obj.metadata.name
            )));
        }
        let unconditional = obj.metadata.resource_version.is_empty();
        for _ in 0..PATCH_RETRIES {
            let (old, revision) = self.get_with_revision(kind, namespace, name).await?;
            if !unconditional && parse_revision(&obj.metadata.resource_version)? != revision {
                return Err(conflict(kind, name));
            }
            let result = self
                .write_update(
                    kind,
                    old,
                    revision,
                    obj.clone(),
                    scope,
                    opts,
                    Ownership::Track,
                )
                .await;
            match result {
                // Without a resourceVersion the client asked for last-writer-wins: retry races.
                Err(s) if unconditional && s.code == 409 && s.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(conflict(kind, name))
    }

    /// The shared tail of update and patch: merge server-owned fields, validate, bump generation,
    /// track managed fields, honour finalizers, and write conditionally on `revision`.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        kind: &KindInfo,
        old: Object,
        revision: Revision,
        incoming: Object,
        scope: Scope,
        opts: &WriteOptions,
        ownership: Ownership,
    ) -> Result<Object, Status> {
        let mut new = match scope {
            Scope::Status => {
                let mut merged = old.clone();
                copy_status(&incoming, &mut merged);
                if ownership == Ownership::Applied {
                    merged.metadata.managed_fields = incoming.metadata.managed_fields.clone();
                }
                merged
            }
            Scope::Main => {
                let mut merged = incoming;
                if kind.status_subresource {
                    copy_status(&old, &mut merged);
                }
                if ownership == Ownership::Track {
                    merged.metadata.managed_fields = old.metadata.managed_fields.clone();
                }
                merged
            }
        };
        new.metadata.uid = old.metadata.uid.clone();
        new.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
        new.metadata.deletion_timestamp = old.metadata.deletion_timestamp.clone();
        new.metadata.deletion_grace_period_seconds = old.metadata.deletion_grace_period_seconds;
        new.metadata.namespace = old.metadata.namespace.clone();
        new.metadata.generate_name = old.metadata.generate_name.clone();
        if kind.kind == "Namespace" && scope == Scope::Main {
            // spec.finalizers change only through the finalize subresource.
            if let Some(spec) = old.body.get("spec") {
                new.body.insert("spec".into(), spec.clone());
            }
        }
        Self::validate(kind, &mut new, Some(&old))?;
        if spec_part(&new) != spec_part(&old) {
            self.admit(kind, &new).await?;
        }
        new.metadata.generation = if spec_part(&new) != spec_part(&old) {
            old.metadata.generation + 1
        } else {
            old.metadata.generation
        };
        if ownership == Ownership::Track {
            let mut value = new.to_value();
            patch::track_update(Some(&old.to_value()), &mut value, manager(opts), scope);
            new = Object::from_value(value).map_err(|e| Status::internal(e.to_string()))?;
        }
        new.metadata.resource_version.clear();
        let mut old_cmp = old.clone();
        old_cmp.metadata.resource_version.clear();
        if new == old_cmp {
            return Ok(old); // nothing changed: no write, no new revision
        }
        if opts.dry_run {
            return Ok(new);
        }
        self.store_or_release(kind, new, revision).await
    }

    /// Writes `new` conditionally on `revision`, or deletes it when it is being deleted and its
    /// last finalizer is gone.
    async fn store_or_release(
        &self,
        kind: &KindInfo,
        mut new: Object,
        revision: Revision,
    ) -> Result<Object, Status> {
        let key = key(kind, &new.metadata.namespace, &new.metadata.name);
        let finished = new.metadata.deletion_timestamp.is_some() && Self::finalizers_done(&new);
        let op = if finished {
            Op::Delete {
                key,
                expected: Some(revision),
            }
        } else {
            Op::Update {
                key,
                value: encode(&new)?,
                expected: Some(revision),
            }
        };
        let done = self
            .store
            .commit(vec![op])
            .await
            .map_err(|e| store_status(kind, &new.metadata.name, e))?;
        new.metadata.resource_version = done.revision.to_string();
        Ok(new)
    }

    fn finalizers_done(obj: &Object) -> bool {
        let spec_finalizers = obj
            .body
            .get("spec")
            .and_then(|s| s.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        obj.metadata.finalizers.is_empty() && !(obj.kind == "Namespace" && spec_finalizers)
    }

    /// Patches an object with a merge, JSON or strategic merge patch, or server-side apply.
    /// Apply creates the object when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        patch_kind: PatchKind,
        body: &[u8],
        scope: Scope,
        opts: &WriteOptions,
    ) -> Result<Object, Status> {
        let patch_value = match patch_kind {
            PatchKind::Apply => vmo_api::decode::decode_one(body),
            _ => serde_json::from_slice(body).map_err(vmo_api::decode::DecodeError::Json),
        }
        .map_err(|e| Status::bad_request(e.to_string()))?;
        let object_patch = matches!(
            patch_kind,
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply
        );
        if object_patch && !patch_value.is_object() {
            return Err(Status::bad_request("the patch must be a JSON object"));
        }
        if patch_kind == PatchKind::Apply
            && patch_value.get("metadata").is_some_and(|m| !m.is_object())
        {
            return Err(Status::bad_request("metadata must be an object"));
        }
        if patch_kind == PatchKind::Apply && opts.field_manager.is_empty() {
            return Err(Status::bad_request(
                "fieldManager is required for apply patches",
            ));
        }
        for _ in 0..PATCH_RETRIES {
            let current = self.get_with_revision(kind, namespace, name).await;
            let (old, revision) = match current {
                Ok(found) => found,
                Err(s)
                    if s.code == 404 && patch_kind == PatchKind::Apply && scope == Scope::Main =>
                {
                    let mut applied = patch_value.clone();
                    if applied
                        .get("metadata")
                        .and_then(|m| m.get("name"))
                        .is_none()
                    {
                        applied["metadata"]["name"] = Value::String(name.to_string());
                    }
                    let value = patch::server_side_apply(
                        None,
                        &applied,
                        &opts.field_manager,
                        opts.force,
                        scope,
                    )
                    .map_err(|e| apply_status(kind, name, e))?;
                    match self
                        .create_owned(kind, namespace, value, opts, Ownership::Applied)
                        .await
                    {
                        Err(s) if s.code == 409 && s.reason == "AlreadyExists" => continue,
                        other => return other,
                    }
                }
                Err(s) => return Err(s),
            };
            let old_value = old.to_value();
            let new_value = match patch_kind {
                PatchKind::Merge | PatchKind::Strategic => {
                    let mut v = old_value.clone();
                    patch::merge_patch(&mut v, &patch_value)
                        .map_err(|e| Status::bad_request(e.to_string()))?;
                    v
                }
                PatchKind::Json => {
                    let mut v = old_value.clone();
                    patch::json_patch(&mut v, &patch_value)
                        .map_err(|e| Status::failure(422, "Invalid", e.to_string()))?;
                    v
                }
                PatchKind::Apply => {
                    if let Some(rv) = patch_value
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                    {
                        if parse_revision(rv)? != revision {
                            return Err(conflict(kind, name));
                        }
                    }
                    patch::server_side_apply(
                        Some(&old_value),
                        &patch_value,
                        &opts.field_manager,
                        opts.force,
                        scope,
                    )
                    .map_err(|e| apply_status(kind, name, e))?
                }
            };
            let requested_rv = new_value
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            let mut new = Object::from_value(new_value).map_err(|e| {
                Status::bad_request(format!("the patched object has an invalid shape: {e}"))
            })?;
            let explicit_rv = match &requested_rv {
                Some(rv) if *rv != revision.to_string() => return Err(conflict(kind, name)),
                Some(_) => patch_value.pointer("/metadata/resourceVersion").is_some(),
                None => false,
            };
            if new.metadata.name != name {
                return Err(Status::bad_request("a patch may not change metadata.name"));
            }
            new.metadata.resource_version.clear();
            let ownership = if patch_kind == PatchKind::Apply {
                Ownership::Applied
            } else {
                Ownership::Track
            };
            let result = self
                .write_update(kind, old, revision, new, scope, opts, ownership)
                .await;
            match result {
                Err(s) if s.code == 409 && s.reason == "Conflict" && !explicit_rv => continue,
                other => return other,
            }
        }
        Err(conflict(kind, name))
    }

    /// Writes an already-validated object as is, conditionally on `revision`.
    async fn commit_raw(
        &self,
        kind: &KindInfo,
        mut obj: Object,
        revision: Revision,
    ) -> Result<Object, Status> {
        obj.metadata.resource_version.clear();
        let done = self
            .store
            .commit(vec![Op::Update {
                key: key(kind, &obj.metadata.namespace, &obj.metadata.name),
                value: encode(&obj)?,
                expected: Some(revision),
            }])
            .await
            .map_err(|e| store_status(kind, &obj.metadata.name, e))?;
        obj.metadata.resource_version = done.revision.to_string();
        Ok(obj)
    }

    /// Sets a namespace's `spec.finalizers` (the `finalize` subresource).
    pub async fn finalize_namespace(&self, name: &str, body: Value) -> Result<Object, Status> {
        let kind = *self
            .registry
            .resolve("namespaces")
            .expect("namespaces are registered");
        let (old, revision) = self.get_with_revision(&kind, "", name).await?;
        let mut new = old.clone();
        let finalizers = body
            .get("spec")
            .and_then(|s| s.get("finalizers"))
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        new.body
            .insert("spec".into(), serde_json::json!({"finalizers": finalizers}));
        let finished = new.metadata.deletion_timestamp.is_some() && Self::finalizers_done(&new);
        if finished {
            // A create that raced the namespace controller's sweep must not outlive the namespace.
            for k in self.registry.all().iter().filter(|k| k.namespaced) {
                let left = self
                    .store
                    .list(&prefix(k, Some(name)), None, Some(1))
                    .await
                    .map_err(|e| store_status(&kind, name, e))?;
                if !left.items.is_empty() {
                    return Err(Status::conflict(
                        "namespaces",
                        name,
                        &format!("{} objects remain in the namespace", k.resource_name()),
                    ));
                }
            }
        }
        self.store_or_release(&kind, new, revision).await
    }

    /// Deletes an object, or marks it for deletion while finalizers remain.
    /// Returns the object as it was deleted or as it now waits.
    pub async fn delete(
        &self,
        kind: &KindInfo,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Object, Status> {
        for _ in 0..PATCH_RETRIES {
            let (old, revision) = self.get_with_revision(kind, namespace, name).await?;
            if let Some(uid) = &opts.precondition_uid {
                if *uid != old.metadata.uid {
                    return Err(Status::conflict(
                        &kind.resource_name(),
                        name,
                        &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", old.metadata.uid),
                    ));
                }
            }
            if let Some(rv) = &opts.precondition_resource_version {
                if parse_revision(rv)? != revision {
                    return Err(Status::conflict(
                        &kind.resource_name(),
                        name,
                        &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"),
                    ));
                }
            }
            let mut new = old.clone();
            let cascade_finalizer = match opts.propagation {
                Propagation::Foreground => Some(FOREGROUND_FINALIZER),
                Propagation::Orphan => Some(ORPHAN_FINALIZER),
                Propagation::Background => None,
            };
            if let Some(f) = cascade_finalizer {
                if !new.metadata.finalizers.iter().any(|x| x == f) {
                    new.metadata.finalizers.push(f.into());
                }
            }
            let immediate =
                old.metadata.deletion_timestamp.is_none() && Self::finalizers_done(&new);
            if immediate {
                if opts.dry_run {
                    return Ok(old);
                }
                let op = Op::Delete {
                    key: key(kind, namespace, name),
                    expected: Some(revision),
                };
                match self.store.commit(vec![op]).await {
                    Ok(done) => {
                        let mut gone = old;
                        gone.metadata.resource_version = done.revision.to_string();
                        return Ok(gone);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(store_status(kind, name, e)),
                }
            }
            if new.metadata.deletion_timestamp.is_none() {
                new.metadata.deletion_timestamp = Some(now_rfc3339());
                new.metadata.deletion_grace_period_seconds = Some(0);
                if kind.kind == "Namespace" {
                    new.body
                        .insert("status".into(), serde_json::json!({"phase": "Terminating"}));
                }
            }
            if new == old {
                return Ok(old); // already waiting for its finalizers
            }
            if opts.dry_run {
                return Ok(new);
            }
            match self.commit_raw(kind, new, revision).await {
                Ok(obj) => return Ok(obj),
                Err(s) if s.code == 409 => continue,
                Err(s) => return Err(s),
            }
        }
        Err(conflict(kind, name))
    }
}

/// Makes `to`'s status that of `from` (absent if absent).
fn copy_status(from: &Object, to: &mut Object) {
    match from.body.get("status") {
        Some(status) => to.body.insert("status".into(), status.clone()),
        None => to.body.remove("status"),
    };
}

fn conflict(kind: &KindInfo, name: &str) -> Status {
    Status::conflict(
        &kind.resource_name(),
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

fn manager(opts: &WriteOptions) -> &str {
    if opts.field_manager.is_empty() {
        "unknown"
    } else {
        &opts.field_manager
    }
}

fn apply_status(kind: &KindInfo, name: &str, e: patch::PatchError) -> Status {
    match e {
        patch::PatchError::Conflicts(conflicts) => {
            let mut status = Status::failure(
                409,
                "Conflict",
                patch::PatchError::Conflicts(conflicts.clone()).to_string(),
            );
            status.details = Some(vmo_api::status::StatusDetails {
                name: name.to_string(),
                group: kind.group.to_string(),
                kind: kind.plural.to_string(),
                causes: conflicts
                    .iter()
                    .map(|c| vmo_api::status::StatusCause {
                        reason: "FieldManagerConflict".into(),
                        message: format!("conflict with {:?}", c.manager),
                        field: format!(".{}", c.path),
                    })
                    .collect(),
                ..Default::default()
            });
            status
        }
        other => Status::bad_request(other.to_string()),
    }
}

fn encode_continue(revision: Revision, last_key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{revision}:{last_key}"))
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, String), Status> {
    use base64::Engine;
    let bad = || Status::bad_request(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (revision, key) = text.split_once(':').ok_or_else(bad)?;
    let revision = revision.parse().map_err(|_| bad())?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok((revision, key.to_string()))
}
