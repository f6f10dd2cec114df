//! API behaviour through HTTPS against an in-process server over a real redb store: authentication,
//! validation paths, conflicts, the status subresource, patches and server-side apply, selectors,
//! pagination, watch resume and 410, finalizers, cascading deletion and namespaces.

use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use vmo_api::Object;
use vmo_client::{Client, ClientError};
use vmo_testkit::{vm_manifest, wait_for, TestServer};

const JSON: &str = "application/json";
const WAIT: Duration = Duration::from_secs(15);

fn api_error(r: Result<impl std::fmt::Debug, ClientError>) -> vmo_api::Status {
    match r {
        Err(ClientError::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn raw(
    client: &Client,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<Value, ClientError> {
    client
        .call(method, path, Some((content_type, body)), JSON)
        .await
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let s = TestServer::start().await;
    let anonymous = s.client_with_token("wrong-token");
    let status = api_error(anonymous.get_json("/api/v1/namespaces").await);
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));
    let status = api_error(
        anonymous
            .get_json("/apis/kubevirt.io/v1/virtualmachines")
            .await,
    );
    assert_eq!(status.code, 401);
    // Version and health are public, as in Kubernetes.
    assert!(anonymous.get_json("/version").await.unwrap()["gitVersion"]
        .as_str()
        .unwrap()
        .contains("vmo"));
    assert!(s.client.get_json("/api/v1/namespaces").await.is_ok());
}

#[tokio::test]
async fn create_get_and_unknown_fields_are_kept() {
    let s = TestServer::start().await;
    let vm = s.kind("vm");
    let mut manifest = vm_manifest("keep");
    manifest["spec"]["template"]["spec"]["domain"]["futureField"] = json!({"x": [1, 2]});
    manifest["spec"]["somethingNew"] = json!("kept");
    let created = s.client.create(&vm, "default", &manifest).await.unwrap();
    assert!(!created.metadata.uid.is_empty());
    assert_eq!(created.metadata.generation, 1);
    assert!(created.metadata.creation_timestamp.is_some());
    let got = s.client.get(&vm, "default", "keep").await.unwrap();
    assert_eq!(got.spec()["somethingNew"], "kept");
    assert_eq!(
        got.spec()["template"]["spec"]["domain"]["futureField"]["x"][1],
        2
    );
    let again = api_error(s.client.create(&vm, "default", &manifest).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    let missing = api_error(s.client.get(&vm, "default", "nope").await);
    assert_eq!(missing.code, 404);
    assert_eq!(
        missing.message,
        "virtualmachines.kubevirt.io \"nope\" not found"
    );
}

#[tokio::test]
async fn generate_name_and_missing_namespace() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}, "data": {"a": "b"}});
    let a = s.client.create(&cm, "default", &obj).await.unwrap();
    let b = s.client.create(&cm, "default", &obj).await.unwrap();
    assert!(a.metadata.name.starts_with("cfg-") && a.metadata.name.len() == 9);
    assert_ne!(a.metadata.name, b.metadata.name);
    let status = api_error(s.client.create(&cm, "no-such-ns", &obj).await);
    assert_eq!(status.code, 404);
    assert!(status.message.contains("no-such-ns"), "{}", status.message);
}

#[tokio::test]
async fn invalid_objects_name_every_bad_field() {
    let s = TestServer::start().await;
    let vm = s.kind("vm");
    let mut bad = vm_manifest("Bad_Name");
    bad["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = json!("12QB");
    bad["spec"]["runStrategy"] = json!("Sometimes");
    bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] =
        json!("floppy");
    let status = api_error(s.client.create(&vm, "default", &bad).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status
            .message
            .contains(r#"spec.template.spec.domain.memory.guest: Invalid value: "12QB""#),
        "{}",
        status.message
    );
    let fields: Vec<String> = status
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    for expected in [
        "metadata.name",
        "spec.runStrategy",
        "spec.template.spec.domain.memory.guest",
        "spec.template.spec.domain.devices.disks[0].disk.bus",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
    // A wrong type names its field too.
    let mut typed = vm_manifest("typed");
    typed["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = json!("four");
    let status = api_error(s.client.create(&vm, "default", &typed).await);
    assert_eq!(
        status.details.unwrap().causes[0].field,
        "spec.template.spec.domain.cpu.cores"
    );
    assert!(
        s.client
            .list(&vm, Some("default"), "")
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn hostile_bodies_are_refused() {
    let s = TestServer::start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let status = api_error(raw(&s.client, Method::POST, path, JSON, huge.into_bytes()).await);
    assert_eq!(status.code, 413);
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\na: &a [x,x,x,x,x,x,x,x,x,x]\n",
    );
    for (i, prev) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        let n = (b'b' + i as u8) as char;
        bomb.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    let status = api_error(
        raw(
            &s.client,
            Method::POST,
            path,
            "application/yaml",
            bomb.into_bytes(),
        )
        .await,
    );
    assert_eq!(status.code, 400, "{}", status.message);
    let deep = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"deep"}},"x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(
        api_error(raw(&s.client, Method::POST, path, JSON, deep.into_bytes()).await).code,
        400
    );
    let status = api_error(
        raw(
            &s.client,
            Method::POST,
            path,
            "application/yaml",
            b"a: [unclosed".to_vec(),
        )
        .await,
    );
    assert_eq!(status.code, 400);
    assert!(status.message.contains("YAML"), "{}", status.message);
    let status = api_error(
        raw(
            &s.client,
            Method::POST,
            path,
            "application/vnd.kubernetes.protobuf",
            b"k8s\0".to_vec(),
        )
        .await,
    );
    assert_eq!(status.code, 415);
}

#[tokio::test]
async fn stale_updates_conflict() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let created = s
        .client
        .create(
            &cm,
            "default",
            &json!({"metadata": {"name": "c"}, "data": {"v": "1"}}),
        )
        .await
        .unwrap();
    let mut first = created.clone();
    first.body.insert("data".into(), json!({"v": "2"}));
    let updated = s.client.update(&cm, &first, None).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut stale = created.clone();
    stale.body.insert("data".into(), json!({"v": "3"}));
    let status = api_error(s.client.update(&cm, &stale, None).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"));
    assert_eq!(
        s.client.get(&cm, "default", "c").await.unwrap().body["data"]["v"],
        "2"
    );
}

#[tokio::test]
async fn status_is_written_separately_and_generation_counts_spec_changes() {
    let s = TestServer::start().await;
    let vm = s.kind("vm");
    let mut manifest = vm_manifest("st");
    manifest["status"] = json!({"printableStatus": "Running"});
    let created = s.client.create(&vm, "default", &manifest).await.unwrap();
    assert!(
        created.body.get("status").is_none(),
        "status is not set by create"
    );
    // Status update: only status changes, generation stays.
    let mut with_status = created.clone();
    with_status
        .body
        .insert("status".into(), json!({"printableStatus": "Stopped"}));
    with_status
        .body
        .insert("spec".into(), json!({"runStrategy": "Always"}));
    let after = s
        .client
        .update(&vm, &with_status, Some("status"))
        .await
        .unwrap();
    assert_eq!(after.status()["printableStatus"], "Stopped");
    assert_eq!(
        after.spec()["runStrategy"],
        "Halted",
        "the status endpoint ignores spec"
    );
    assert_eq!(after.metadata.generation, 1);
    // Main update: status is ignored, spec changes bump generation.
    let mut spec_change = after.clone();
    spec_change.body["spec"]["runStrategy"] = json!("Always");
    spec_change
        .body
        .insert("status".into(), json!({"printableStatus": "Hacked"}));
    let after = s.client.update(&vm, &spec_change, None).await.unwrap();
    assert_eq!(after.metadata.generation, 2);
    assert_eq!(after.status()["printableStatus"], "Stopped");
    // A metadata-only change does not bump generation.
    let mut labels = after.clone();
    labels.metadata.labels.insert("x".into(), "y".into());
    let after = s.client.update(&vm, &labels, None).await.unwrap();
    assert_eq!(after.metadata.generation, 2);
}

#[tokio::test]
async fn merge_json_patch_and_server_side_apply() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    s.client
        .create(
            &cm,
            "default",
            &json!({"metadata": {"name": "p"}, "data": {"a": "1", "b": "2"}}),
        )
        .await
        .unwrap();
    let merged = s
        .client
        .patch(
            &cm,
            "default",
            "p",
            "application/merge-patch+json",
            br#"{"data":{"a":null,"c":"3"}}"#.to_vec(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(merged.body["data"], json!({"b": "2", "c": "3"}));
    let patched = s
        .client
        .patch(
            &cm,
            "default",
            "p",
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/data/b","value":"9"}]"#.to_vec(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(patched.body["data"]["b"], "9");
    let bad = api_error(
        s.client
            .patch(
                &cm,
                "default",
                "p",
                "application/json-patch+json",
                br#"[{"op":"remove","path":"/nope"}]"#.to_vec(),
                "",
            )
            .await,
    );
    assert_eq!(bad.code, 422);
    // Server-side apply creates, then conflicts with another manager, then force takes over.
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "namespace": "default"}, "data": {"k": "alice"}});
    s.client.apply(&cm, &applied, "alice", false).await.unwrap();
    let mut bob = applied.clone();
    bob["data"]["k"] = json!("bob");
    let conflict = api_error(s.client.apply(&cm, &bob, "bob", false).await);
    assert_eq!(conflict.code, 409);
    assert!(conflict.message.contains("alice"), "{}", conflict.message);
    let forced = s.client.apply(&cm, &bob, "bob", true).await.unwrap();
    assert_eq!(forced.body["data"]["k"], "bob");
    // Dropping a field from an apply removes it.
    let with_two = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "namespace": "default"}, "data": {"k": "bob", "extra": "1"}});
    s.client.apply(&cm, &with_two, "bob", false).await.unwrap();
    let back = s.client.apply(&cm, &bob, "bob", false).await.unwrap();
    assert!(back.body["data"].get("extra").is_none());
    // A stale resourceVersion in a patch conflicts.
    let stale = api_error(
        s.client
            .patch(
                &cm,
                "default",
                "p",
                "application/merge-patch+json",
                br#"{"metadata":{"resourceVersion":"1"},"data":{"z":"1"}}"#.to_vec(),
                "",
            )
            .await,
    );
    assert_eq!(stale.code, 409);
}

#[tokio::test]
async fn label_field_selectors_and_pagination() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    for (name, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "web", "tier": "back"})),
        ("c", json!({"app": "db"})),
        ("d", json!({})),
    ] {
        s.client
            .create(
                &cm,
                "default",
                &json!({"metadata": {"name": name, "labels": labels}}),
            )
            .await
            .unwrap();
    }
    let names = |list: vmo_api::ObjectList| {
        list.items
            .into_iter()
            .map(|o| o.metadata.name)
            .collect::<Vec<_>>()
    };
    let q = |sel: &str| format!("labelSelector={}", vmo_client::encode_query(sel));
    assert_eq!(
        names(
            s.client
                .list(&cm, Some("default"), &q("app=web"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, Some("default"), &q("app!=web"))
                .await
                .unwrap()
        ),
        ["c", "d"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, Some("default"), &q("tier in (front,middle)"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, Some("default"), &q("!tier"))
                .await
                .unwrap()
        ),
        ["c", "d"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, Some("default"), &q("tier"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, None, "fieldSelector=metadata.name%3Dc")
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            s.client
                .list(&cm, None, "fieldSelector=metadata.namespace%21%3Ddefault")
                .await
                .unwrap()
        ),
        Vec::<String>::new()
    );
    let bad = api_error(
        s.client
            .list(&cm, None, "fieldSelector=spec.nope%3Dx")
            .await,
    );
    assert_eq!(bad.code, 400);
    assert!(bad.message.contains("field label not supported"));
    let bad = api_error(s.client.list(&cm, None, &q("app in (web")).await);
    assert_eq!(bad.code, 400);
    // Pages of two cover everything once.
    let first = s
        .client
        .list(&cm, Some("default"), "limit=2")
        .await
        .unwrap();
    assert_eq!(names(first.clone()), ["a", "b"]);
    assert!(!first.metadata.continue_token.is_empty());
    let second = s
        .client
        .list(
            &cm,
            Some("default"),
            &format!("limit=2&continue={}", first.metadata.continue_token),
        )
        .await
        .unwrap();
    assert_eq!(names(second.clone()), ["c", "d"]);
    // Field selectors a kind declares.
    let vmi = s.kind("vmi");
    let mut m = vm_manifest("x")["spec"]["template"].clone();
    m["apiVersion"] = json!("kubevirt.io/v1");
    m["kind"] = json!("VirtualMachineInstance");
    m["metadata"] = json!({"name": "i1"});
    let created = s.client.create(&vmi, "default", &m).await.unwrap();
    let mut with_status = created.clone();
    with_status.body.insert(
        "status".into(),
        json!({"nodeName": "node-1", "phase": "Running"}),
    );
    s.client
        .update(&vmi, &with_status, Some("status"))
        .await
        .unwrap();
    assert_eq!(
        names(
            s.client
                .list(&vmi, None, "fieldSelector=status.nodeName%3Dnode-1")
                .await
                .unwrap()
        ),
        ["i1"]
    );
    assert!(names(
        s.client
            .list(&vmi, None, "fieldSelector=status.nodeName%3Dnode-2")
            .await
            .unwrap()
    )
    .is_empty());
}

async fn next_event(w: &mut vmo_client::WatchStream) -> vmo_api::WatchEvent {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("event")
}

async fn next_change(w: &mut vmo_client::WatchStream) -> vmo_api::WatchEvent {
    loop {
        let e = next_event(w).await;
        if e.event_type != "BOOKMARK" {
            return e;
        }
    }
}

#[tokio::test]
async fn watch_delivers_in_order_resumes_and_answers_410() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let start = s
        .client
        .list(&cm, Some("default"), "")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let mut w = s
        .client
        .watch(&cm, Some("default"), &format!("resourceVersion={start}"))
        .await
        .unwrap();
    let created = s
        .client
        .create(
            &cm,
            "default",
            &json!({"metadata": {"name": "w"}, "data": {"v": "1"}}),
        )
        .await
        .unwrap();
    let mut changed = created.clone();
    changed.body.insert("data".into(), json!({"v": "2"}));
    let updated = s.client.update(&cm, &changed, None).await.unwrap();
    s.client
        .delete(&cm, "default", "w", "Background")
        .await
        .unwrap();
    let kinds: Vec<String> = [
        next_change(&mut w).await,
        next_change(&mut w).await,
        next_change(&mut w).await,
    ]
    .into_iter()
    .map(|e| e.event_type)
    .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    // Resume after the update: only the delete follows.
    let mut resumed = s
        .client
        .watch(
            &cm,
            Some("default"),
            &format!("resourceVersion={}", updated.metadata.resource_version),
        )
        .await
        .unwrap();
    let e = next_change(&mut resumed).await;
    assert_eq!(e.event_type, "DELETED");
    assert_eq!(
        e.object["data"]["v"], "2",
        "a delete carries the last state"
    );
    // Bookmarks arrive when asked for.
    let mut bm = s
        .client
        .watch(
            &cm,
            Some("default"),
            &format!(
                "resourceVersion={}&allowWatchBookmarks=true",
                updated.metadata.resource_version
            ),
        )
        .await
        .unwrap();
    let mut saw_bookmark = false;
    for _ in 0..3 {
        if next_event(&mut bm).await.event_type == "BOOKMARK" {
            saw_bookmark = true;
            break;
        }
    }
    assert!(saw_bookmark);
    // History older than the compacted revision answers 410 Gone, so clients list again.
    let current = s.store.revision().await.unwrap();
    s.store.compact(current).await.unwrap();
    let gone = api_error(
        s.client
            .watch(&cm, Some("default"), &format!("resourceVersion={start}"))
            .await
            .map(|_| ()),
    );
    assert_eq!((gone.code, gone.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn watch_without_version_starts_with_current_objects_and_follows_selectors() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    s.client
        .create(
            &cm,
            "default",
            &json!({"metadata": {"name": "old", "labels": {"app": "web"}}}),
        )
        .await
        .unwrap();
    let mut w = s
        .client
        .watch(&cm, Some("default"), "labelSelector=app%3Dweb")
        .await
        .unwrap();
    let first = next_change(&mut w).await;
    assert_eq!(
        (
            first.event_type.as_str(),
            first.object["metadata"]["name"].as_str()
        ),
        ("ADDED", Some("old"))
    );
    // Changing the label moves the object out of the selector: DELETED; back in: ADDED.
    s.client
        .patch(
            &cm,
            "default",
            "old",
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"app":"db"}}}"#.to_vec(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(next_change(&mut w).await.event_type, "DELETED");
    s.client
        .patch(
            &cm,
            "default",
            "old",
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"app":"web"}}}"#.to_vec(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(next_change(&mut w).await.event_type, "ADDED");
}

#[tokio::test]
async fn list_then_watch_misses_nothing_under_concurrent_writes() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let writer = {
        let client = s.client.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                client
                    .create(
                        &cm,
                        "default",
                        &json!({"metadata": {"name": format!("n{i}")}}),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let list = s.client.list(&cm, Some("default"), "").await.unwrap();
    let mut seen: std::collections::BTreeSet<String> =
        list.items.iter().map(|o| o.metadata.name.clone()).collect();
    let mut w = s
        .client
        .watch(
            &cm,
            Some("default"),
            &format!("resourceVersion={}", list.metadata.resource_version),
        )
        .await
        .unwrap();
    let mut last: u64 = list.metadata.resource_version.parse().unwrap();
    while seen.len() < 200 {
        let e = next_change(&mut w).await;
        let obj = Object::from_value(e.object).unwrap();
        let rv: u64 = obj.metadata.resource_version.parse().unwrap();
        assert!(rv > last, "events arrive in order");
        last = rv;
        assert!(
            seen.insert(obj.metadata.name.clone()),
            "{} delivered twice",
            obj.metadata.name
        );
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    s.client
        .create(
            &cm,
            "default",
            &json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}),
        )
        .await
        .unwrap();
    let deleting = s
        .client
        .delete(&cm, "default", "f", "Background")
        .await
        .unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let still = s.client.get(&cm, "default", "f").await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_some(),
        "the object waits for its finalizer"
    );
    let mut release = still.clone();
    release.metadata.finalizers.clear();
    s.client.update(&cm, &release, None).await.unwrap();
    assert!(s
        .client
        .get(&cm, "default", "f")
        .await
        .unwrap_err()
        .is_not_found());
}

fn owned_by(owner: &Object, name: &str) -> Value {
    json!({"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": owner.api_version, "kind": owner.kind, "name": owner.metadata.name,
        "uid": owner.metadata.uid, "blockOwnerDeletion": true
    }]}})
}

#[tokio::test]
async fn owner_deletion_cascades_in_background_foreground_and_orphan_modes() {
    let s = TestServer::start_with_controllers().await;
    let cm = s.kind("cm");
    let vm = s.kind("vm");
    // Background: the owner goes at once, its dependents follow.
    let owner = s
        .client
        .create(&vm, "default", &vm_manifest("bg"))
        .await
        .unwrap();
    s.client
        .create(&cm, "default", &owned_by(&owner, "bg-dep"))
        .await
        .unwrap();
    s.client
        .delete(&vm, "default", "bg", "Background")
        .await
        .unwrap();
    wait_for("background cascade", WAIT, || async {
        s.client
            .get(&cm, "default", "bg-dep")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    // Foreground: the owner stays, marked, until its dependents are gone.
    let owner = s
        .client
        .create(&vm, "default", &vm_manifest("fg"))
        .await
        .unwrap();
    s.client
        .create(&cm, "default", &owned_by(&owner, "fg-dep"))
        .await
        .unwrap();
    let marked = s
        .client
        .delete(&vm, "default", "fg", "Foreground")
        .await
        .unwrap();
    assert!(marked
        .metadata
        .finalizers
        .contains(&"foregroundDeletion".to_string()));
    wait_for("foreground cascade", WAIT, || async {
        let owner_gone = s
            .client
            .get(&vm, "default", "fg")
            .await
            .err()
            .is_some_and(|e| e.is_not_found());
        let dep_gone = s
            .client
            .get(&cm, "default", "fg-dep")
            .await
            .err()
            .is_some_and(|e| e.is_not_found());
        (owner_gone && dep_gone).then_some(())
    })
    .await;
    // Orphan: the dependent stays without its owner reference.
    let owner = s
        .client
        .create(&vm, "default", &vm_manifest("or"))
        .await
        .unwrap();
    s.client
        .create(&cm, "default", &owned_by(&owner, "or-dep"))
        .await
        .unwrap();
    s.client
        .delete(&vm, "default", "or", "Orphan")
        .await
        .unwrap();
    wait_for("orphaning", WAIT, || async {
        let owner_gone = s
            .client
            .get(&vm, "default", "or")
            .await
            .err()
            .is_some_and(|e| e.is_not_found());
        let dep = s.client.get(&cm, "default", "or-dep").await.ok()?;
        (owner_gone && dep.metadata.owner_references.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_empties_it_first() {
    let s = TestServer::start_with_controllers().await;
    let ns = s.kind("ns");
    let cm = s.kind("cm");
    s.client
        .create(&ns, "", &json!({"metadata": {"name": "team-a"}}))
        .await
        .unwrap();
    s.client
        .create(&cm, "team-a", &json!({"metadata": {"name": "x"}}))
        .await
        .unwrap();
    let terminating = s
        .client
        .delete(&ns, "", "team-a", "Background")
        .await
        .unwrap();
    assert_eq!(terminating.status()["phase"], "Terminating");
    let refused = api_error(
        s.client
            .create(&cm, "team-a", &json!({"metadata": {"name": "y"}}))
            .await,
    );
    assert_eq!(refused.code, 403);
    wait_for("namespace removal", WAIT, || async {
        s.client
            .get(&ns, "", "team-a")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    assert!(s
        .client
        .list(&cm, Some("team-a"), "")
        .await
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test]
async fn discovery_lists_every_kind_with_short_names() {
    let s = TestServer::start().await;
    let groups = s.client.get_json("/apis").await.unwrap();
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "kubevirt.io"));
    let kubevirt = s.client.get_json("/apis/kubevirt.io/v1").await.unwrap();
    let vm = kubevirt["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "virtualmachines")
        .unwrap();
    assert_eq!(vm["shortNames"], json!(["vm", "vms"]));
    assert_eq!(vm["namespaced"], true);
    let core = s.client.get_json("/api/v1").await.unwrap();
    assert!(core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "configmaps"));
    assert_eq!(
        api_error(s.client.get_json("/apis/nope.io/v1").await).code,
        404
    );
}

#[tokio::test]
async fn openapi_served_matches_the_committed_golden_file() {
    let s = TestServer::start().await;
    let root = s.client.get_json("/openapi/v3").await.unwrap();
    let mut served = serde_json::Map::new();
    for (key, entry) in root["paths"].as_object().unwrap() {
        let url = entry["serverRelativeURL"].as_str().unwrap();
        served.insert(
            key.clone(),
            s.client
                .get_json(url.split('?').next().unwrap())
                .await
                .unwrap(),
        );
    }
    let served = Value::Object(served);
    let golden_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi-v3.json");
    let rendered = serde_json::to_string_pretty(&served).unwrap() + "\n";
    if std::env::var_os("VMO_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
        std::fs::write(&golden_path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with VMO_UPDATE_GOLDEN=1",
            golden_path.display()
        )
    });
    assert!(golden == rendered, "the served OpenAPI differs from {}: run the test with VMO_UPDATE_GOLDEN=1 and review the diff", golden_path.display());
}

#[tokio::test]
async fn writes_that_change_nothing_take_no_revision() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "same", "namespace": "default"}, "data": {"a": "1"}});
    let first = s.client.apply(&cm, &manifest, "me", false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = s.client.apply(&cm, &manifest, "me", false).await.unwrap();
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    let put = s.client.update(&cm, &again, None).await.unwrap();
    assert_eq!(
        put.metadata.resource_version,
        again.metadata.resource_version
    );
}

#[tokio::test]
async fn malformed_patches_are_refused_not_crashed_on() {
    let s = TestServer::start().await;
    let path = "/api/v1/namespaces/default/configmaps/new?fieldManager=me";
    for body in [&br#"{"metadata":"x"}"#[..], b"[1]", b"42"] {
        let status = api_error(
            raw(
                &s.client,
                Method::PATCH,
                path,
                "application/apply-patch+yaml",
                body.to_vec(),
            )
            .await,
        );
        assert_eq!(status.code, 400, "{}", String::from_utf8_lossy(body));
    }
    let status = api_error(raw(&s.client, Method::PATCH, path, "text/plain", b"{}".to_vec()).await);
    assert_eq!(status.code, 415);
    // The server still answers.
    assert!(s
        .client
        .get_json("/api/v1/namespaces/default")
        .await
        .is_ok());
}

#[tokio::test]
async fn a_watch_from_the_future_is_refused() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    let status = api_error(
        s.client
            .watch(&cm, Some("default"), "resourceVersion=999999")
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code, 504);
    assert!(status.message.contains("Too large resource version"));
}

#[tokio::test]
async fn foreground_deletion_keeps_dependents_another_owner_holds() {
    let s = TestServer::start_with_controllers().await;
    let cm = s.kind("cm");
    let vm = s.kind("vm");
    let a = s
        .client
        .create(&vm, "default", &vm_manifest("owner-a"))
        .await
        .unwrap();
    let b = s
        .client
        .create(&vm, "default", &vm_manifest("owner-b"))
        .await
        .unwrap();
    let mut shared = owned_by(&a, "shared");
    let second = owned_by(&b, "x")["metadata"]["ownerReferences"][0].clone();
    shared["metadata"]["ownerReferences"]
        .as_array_mut()
        .unwrap()
        .push(second);
    s.client.create(&cm, "default", &shared).await.unwrap();
    s.client
        .delete(&vm, "default", "owner-a", "Foreground")
        .await
        .unwrap();
    let dep = wait_for("owner-a gone, shared kept", WAIT, || async {
        let gone = s
            .client
            .get(&vm, "default", "owner-a")
            .await
            .err()
            .is_some_and(|e| e.is_not_found());
        let dep = s.client.get(&cm, "default", "shared").await.ok()?;
        gone.then_some(dep)
    })
    .await;
    let owners: Vec<&str> = dep
        .metadata
        .owner_references
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(owners, ["owner-b"]);
}

#[tokio::test]
async fn metrics_count_requests_and_need_a_token() {
    let s = TestServer::start().await;
    let cm = s.kind("cm");
    s.client
        .create(&cm, "default", &json!({"metadata": {"name": "m"}}))
        .await
        .unwrap();
    s.client.get(&cm, "default", "m").await.unwrap();
    let text = s.client.get_text("/metrics").await.unwrap();
    assert!(
        text.contains(
            r#"vmo_apiserver_requests_total{verb="CREATE",resource="configmaps",code="201"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"vmo_apiserver_requests_total{verb="GET",resource="configmaps",code="200"} 1"#
    ));
    assert!(text
        .contains("vmo_apiserver_request_duration_seconds_bucket{verb=\"CREATE\",le=\"+Inf\"} 1"));
    assert!(text.contains("vmo_store_revision "));
    assert!(
        text.contains("# TYPE vmo_events_dropped_total counter"),
        "{text}"
    );
    let anonymous = s.client_with_token("nope");
    assert_eq!(api_error(anonymous.get_text("/metrics").await).code, 401);
}

#[tokio::test]
async fn stop_and_start_keep_a_rerun_on_failure_strategy_as_kubevirt_does() {
    let s = TestServer::start_with_controllers().await;
    let (vm_kind, vmi_kind) = (s.kind("vm"), s.kind("vmi"));
    let mut vm = vm_manifest("rerun");
    vm["spec"]["runStrategy"] = json!("RerunOnFailure");
    s.client.create(&vm_kind, "default", &vm).await.unwrap();
    let first = wait_for("the first instance", WAIT, || async {
        s.client.get(&vmi_kind, "default", "rerun").await.ok()
    })
    .await;
    let lifecycle = |action: &str| {
        format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/rerun/{action}"
        )
    };
    let put = |path: String| {
        let client = s.client.clone();
        async move {
            client
                .call(
                    Method::PUT,
                    &path,
                    Some(("application/json", b"{}".to_vec())),
                    "application/json",
                )
                .await
        }
    };
    put(lifecycle("stop")).await.unwrap();
    // The request names the instance it stops, and the strategy stays.
    let stopped = wait_for("the instance gone", WAIT, || async {
        let gone = s
            .client
            .get(&vmi_kind, "default", "rerun")
            .await
            .err()
            .is_some_and(|e| e.is_not_found());
        let vm = s.client.get(&vm_kind, "default", "rerun").await.unwrap();
        (gone && vm.status()["printableStatus"] == "Stopped").then_some(vm)
    })
    .await;
    assert_eq!(stopped.spec()["runStrategy"], "RerunOnFailure");
    let requests = &stopped.status()["stateChangeRequests"];
    assert_eq!(requests[0]["action"], "Stop", "{requests}");
    assert_eq!(requests[0]["uid"], json!(first.metadata.uid), "{requests}");
    // Stopped on request, it is not started again behind the user's back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.client.get(&vmi_kind, "default", "rerun").await.is_err());
    // A start request brings a new instance, and the requests are cleared once it runs.
    put(lifecycle("start")).await.unwrap();
    let second = wait_for("a new instance", WAIT, || async {
        s.client.get(&vmi_kind, "default", "rerun").await.ok()
    })
    .await;
    assert_ne!(second.metadata.uid, first.metadata.uid);
    wait_for("requests cleared", WAIT, || async {
        let vm = s.client.get(&vm_kind, "default", "rerun").await.unwrap();
        vm.status()["stateChangeRequests"].is_null().then_some(())
    })
    .await;
    let vm = s.client.get(&vm_kind, "default", "rerun").await.unwrap();
    assert_eq!(vm.spec()["runStrategy"], "RerunOnFailure");
}
