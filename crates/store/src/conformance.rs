//! The conformance suite every store backend must pass: ordering, conflicts, atomic transactions,
//! pagination, watch from a revision, compaction answers, and durability across restarts.
//!
//! A backend's test file calls [`run_all`] with a function that opens the backend on a directory.
//! Crash durability needs a process to kill, so it is split into [`crash_writer`] (run in a child
//! process) and [`verify_acknowledged`] (run after reopening).

use crate::{EventKind, Op, Revision, Store, StoreError, Watch};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Opens a backend on a directory (the same directory again after a restart).
pub type Opener = fn(&Path) -> Arc<dyn Store>;

/// One named check of the suite.
type Check = (
    &'static str,
    fn(Arc<dyn Store>) -> futures_util::future::BoxFuture<'static, ()>,
);

fn put(key: &str, value: &str) -> Op {
    Op::Create {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

async fn next_event(w: &mut Box<dyn Watch>) -> crate::Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch delivered nothing within 10 s")
        .expect("watch ended")
        .expect("watch failed")
}

/// Runs every check, each on a fresh directory.
pub async fn run_all(open: Opener) {
    let checks: [Check; 7] = [
        ("crud_and_revisions", |s| Box::pin(crud_and_revisions(s))),
        ("conflicts", |s| Box::pin(conflicts(s))),
        ("atomic_transactions", |s| Box::pin(atomic_transactions(s))),
        ("list_pagination", |s| Box::pin(list_pagination(s))),
        ("watch_from_revision", |s| Box::pin(watch_from_revision(s))),
        ("watch_under_concurrent_writes", |s| {
            Box::pin(watch_under_concurrent_writes(s))
        }),
        ("compaction", |s| Box::pin(compaction(s))),
    ];
    for (name, check) in checks {
        let dir = tempfile::tempdir().expect("temp dir");
        eprintln!("conformance: {name}");
        check(open(dir.path())).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    eprintln!("conformance: restart_keeps_everything");
    restart_keeps_everything(open, dir.path()).await;
}

async fn crud_and_revisions(s: Arc<dyn Store>) {
    assert_eq!(s.revision().await.unwrap(), 0);
    let a = s.commit(vec![put("/r/a", "1")]).await.unwrap();
    let b = s.commit(vec![put("/r/b", "2")]).await.unwrap();
    assert!(b.revision > a.revision, "revisions increase");
    let got = s.get("/r/a").await.unwrap().unwrap();
    assert_eq!(&*got.value, b"1");
    assert_eq!(got.create_revision, a.revision);
    assert_eq!(got.mod_revision, a.revision);
    let u = s
        .commit(vec![Op::Update {
            key: "/r/a".into(),
            value: b"1b".to_vec(),
            expected: Some(a.revision),
        }])
        .await
        .unwrap();
    let got = s.get("/r/a").await.unwrap().unwrap();
    assert_eq!(got.create_revision, a.revision, "create revision is kept");
    assert_eq!(got.mod_revision, u.revision);
    assert_eq!(&*u.previous[0].as_ref().unwrap().value, b"1");
    let d = s
        .commit(vec![Op::Delete {
            key: "/r/a".into(),
            expected: None,
        }])
        .await
        .unwrap();
    assert_eq!(&*d.previous[0].as_ref().unwrap().value, b"1b");
    assert!(s.get("/r/a").await.unwrap().is_none());
    assert_eq!(s.revision().await.unwrap(), d.revision);
}

async fn conflicts(s: Arc<dyn Store>) {
    let a = s.commit(vec![put("/c/a", "1")]).await.unwrap();
    assert_eq!(
        s.commit(vec![put("/c/a", "again")]).await.unwrap_err(),
        StoreError::AlreadyExists { key: "/c/a".into() }
    );
    s.commit(vec![Op::Update {
        key: "/c/a".into(),
        value: b"2".to_vec(),
        expected: Some(a.revision),
    }])
    .await
    .unwrap();
    let stale = s
        .commit(vec![Op::Update {
            key: "/c/a".into(),
            value: b"3".to_vec(),
            expected: Some(a.revision),
        }])
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale:?}");
    let stale_delete = s
        .commit(vec![Op::Delete {
            key: "/c/a".into(),
            expected: Some(a.revision),
        }])
        .await
        .unwrap_err();
    assert!(matches!(stale_delete, StoreError::Conflict { .. }));
    assert_eq!(&*s.get("/c/a").await.unwrap().unwrap().value, b"2");
    let missing = s
        .commit(vec![Op::Update {
            key: "/c/none".into(),
            value: vec![],
            expected: None,
        }])
        .await
        .unwrap_err();
    assert_eq!(
        missing,
        StoreError::NotFound {
            key: "/c/none".into()
        }
    );
    // Many writers racing on one key: exactly one wins each round.
    let current = s.get("/c/a").await.unwrap().unwrap().mod_revision;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![Op::Update {
                key: "/c/a".into(),
                value: format!("w{i}").into_bytes(),
                expected: Some(current),
            }])
            .await
            .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 1, "exactly one compare-and-swap wins");
}

async fn atomic_transactions(s: Arc<dyn Store>) {
    s.commit(vec![put("/t/exists", "x")]).await.unwrap();
    let before = s.revision().await.unwrap();
    let err = s
        .commit(vec![put("/t/new", "1"), put("/t/exists", "2")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }));
    assert!(
        s.get("/t/new").await.unwrap().is_none(),
        "nothing of a failed transaction is applied"
    );
    assert_eq!(
        s.revision().await.unwrap(),
        before,
        "a failed transaction takes no revision"
    );
    let both = s
        .commit(vec![put("/t/x", "1"), put("/t/y", "2")])
        .await
        .unwrap();
    let x = s.get("/t/x").await.unwrap().unwrap();
    let y = s.get("/t/y").await.unwrap().unwrap();
    assert_eq!(
        (x.mod_revision, y.mod_revision),
        (both.revision, both.revision)
    );
    let dup = s
        .commit(vec![put("/t/z", "1"), put("/t/z", "2")])
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::DuplicateKey { .. }));
}

async fn list_pagination(s: Arc<dyn Store>) {
    for i in (0..25).rev() {
        s.commit(vec![put(&format!("/l/a/{i:02}"), "v")])
            .await
            .unwrap();
    }
    s.commit(vec![put("/l/b/other", "v")]).await.unwrap();
    s.commit(vec![put("/l/a", "prefix itself is not a child")])
        .await
        .unwrap();
    let all = s.list("/l/a/", None, None).await.unwrap();
    assert_eq!(all.items.len(), 25);
    assert!(!all.more);
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "lists are in key order");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s.list("/l/a/", after.as_deref(), Some(10)).await.unwrap();
        seen.extend(page.items.iter().map(|kv| kv.key.clone()));
        after = page.items.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen.len(), 25, "pages cover every key once");
    assert_eq!(all.revision, s.revision().await.unwrap());
}

async fn watch_from_revision(s: Arc<dyn Store>) {
    let start = s.commit(vec![put("/w/a", "1")]).await.unwrap().revision;
    let mut w = s.watch("/w/", start).await.unwrap();
    s.commit(vec![put("/x/ignored", "1")]).await.unwrap();
    let b = s.commit(vec![put("/w/b", "2")]).await.unwrap().revision;
    let d = s
        .commit(vec![Op::Delete {
            key: "/w/a".into(),
            expected: None,
        }])
        .await
        .unwrap()
        .revision;
    let e1 = next_event(&mut w).await;
    assert_eq!(
        (e1.kind, e1.kv.key.as_str(), e1.revision()),
        (EventKind::Put, "/w/b", b)
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(
        (e2.kind, e2.kv.key.as_str(), e2.revision()),
        (EventKind::Delete, "/w/a", d)
    );
    assert_eq!(&*e2.kv.value, b"1", "a delete carries the last value");
    // Starting from an older revision replays history in order.
    let mut replay = s.watch("/w/", 0).await.unwrap();
    let revisions: Vec<Revision> = [
        next_event(&mut replay).await,
        next_event(&mut replay).await,
        next_event(&mut replay).await,
    ]
    .iter()
    .map(|e| e.revision())
    .collect();
    assert_eq!(revisions, vec![start, b, d]);
    // A transaction's events are all delivered.
    let mut w2 = s.watch("/w/", d).await.unwrap();
    s.commit(vec![put("/w/m1", "1"), put("/w/m2", "2")])
        .await
        .unwrap();
    let m1 = next_event(&mut w2).await;
    let m2 = next_event(&mut w2).await;
    assert_eq!(m1.revision(), m2.revision());
    assert_ne!(m1.kv.key, m2.kv.key);
}

async fn watch_under_concurrent_writes(s: Arc<dyn Store>) {
    let from = s.revision().await.unwrap();
    let mut w = s.watch("/cw/", from).await.unwrap();
    let writers = 8;
    let per_writer = 100;
    let mut tasks = Vec::new();
    for wr in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                s.commit(vec![put(&format!("/cw/{wr}/{i}"), "v")])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = from;
    for _ in 0..writers * per_writer {
        let e = next_event(&mut w).await;
        assert!(
            e.revision() > last,
            "events arrive in revision order without repeats"
        );
        last = e.revision();
    }
    assert_eq!(last, s.revision().await.unwrap(), "no event is missed");
}

async fn compaction(s: Arc<dyn Store>) {
    for i in 0..10 {
        s.commit(vec![put(&format!("/k/{i}"), "v")]).await.unwrap();
    }
    s.compact(5).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 5);
    match s.watch("/k/", 3).await {
        Err(StoreError::Compacted {
            requested: 3,
            compacted: 5,
        }) => {}
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut w = s.watch("/k/", 5).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 6);
    assert_eq!(
        s.list("/k/", None, None).await.unwrap().items.len(),
        10,
        "compaction keeps data"
    );
    assert!(s.compact(1000).await.is_err(), "cannot compact the future");
}

async fn restart_keeps_everything(open: Opener, dir: &Path) {
    let rev = {
        let s = open(dir);
        s.commit(vec![put("/p/a", "1")]).await.unwrap();
        let rev = s.commit(vec![put("/p/b", "2")]).await.unwrap().revision;
        drop(s);
        rev
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = open(dir);
    assert_eq!(s.revision().await.unwrap(), rev);
    assert_eq!(&*s.get("/p/b").await.unwrap().unwrap().value, b"2");
    let mut w = s.watch("/p/", 0).await.unwrap();
    assert_eq!(
        next_event(&mut w).await.kv.key,
        "/p/a",
        "history survives a restart"
    );
    let next = s.commit(vec![put("/p/c", "3")]).await.unwrap().revision;
    assert_eq!(next, rev + 1, "revisions continue after a restart");
}

/// Child side of the crash test: writes keys `/crash/N` forever from several tasks, printing
/// `ACK <key>` after each acknowledged write. The parent kills the process with SIGKILL.
pub async fn crash_writer(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("/crash/{writer}-{i}");
                s.commit(vec![put(&key, "payload")]).await.expect("write");
                println!("ACK {key}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Parent side of the crash test: every acknowledged key must be present after reopening.
pub async fn verify_acknowledged(s: Arc<dyn Store>, acknowledged: &[String]) {
    for key in acknowledged {
        assert!(
            s.get(key).await.unwrap().is_some(),
            "acknowledged write {key} was lost in the crash"
        );
    }
    let listed = s.list("/crash/", None, None).await.unwrap();
    assert!(listed.items.len() >= acknowledged.len());
}
