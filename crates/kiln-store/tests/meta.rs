//! The metadata store's behaviour, run against SQLite and a real PostgreSQL
//! (`KILN_TEST_DATABASE_URL`, started by `scripts/test`).

use kiln_domain::{
    AppId, BuildId, BuildState, ChannelAction, ChannelName, Language, OwnerId, Phases, WorkerName,
};
use kiln_store::{
    BuildFilter, ChannelRefusal, ImageDigests, MetaStore, NewBuild, NewVersion, Orphaned, Page,
    Revoked, StoreError, VersionPatch,
};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);

struct TestDb {
    store: MetaStore,
    /// How to open the same database again, to test restarts.
    reopen: Reopen,
    _dir: Option<tempfile::TempDir>,
}

enum Reopen {
    Sqlite(String),
    Postgres { url: String, schema: String },
}

impl TestDb {
    async fn reopen(&self) -> MetaStore {
        self.store.close().await;
        match &self.reopen {
            Reopen::Sqlite(url) => MetaStore::connect(url).await.unwrap(),
            Reopen::Postgres { url, schema } => MetaStore::connect_postgres_schema(url, schema)
                .await
                .unwrap(),
        }
    }
}

async fn sqlite_db() -> Option<TestDb> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    Some(TestDb {
        store: MetaStore::connect(&url).await.unwrap(),
        reopen: Reopen::Sqlite(url),
        _dir: Some(dir),
    })
}

async fn postgres_db() -> Option<TestDb> {
    let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("KILN_TEST_REQUIRE_SERVICES").is_err(),
            "KILN_TEST_DATABASE_URL is not set but KILN_TEST_REQUIRE_SERVICES is"
        );
        eprintln!("skipped: KILN_TEST_DATABASE_URL is not set (scripts/test sets it)");
        return None;
    };
    let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
    Some(TestDb {
        store: MetaStore::connect_postgres_schema(&url, &schema)
            .await
            .unwrap(),
        reopen: Reopen::Postgres { url, schema },
        _dir: None,
    })
}

fn new_build(owner: OwnerId, app: AppId, version: &str) -> NewBuild {
    let id = BuildId::new();
    NewBuild {
        id,
        application_id: app,
        owner_id: owner,
        version: version.parse().unwrap(),
        language: Language::Rust,
        phases: Phases::parse_json(r#"["request_headers"]"#).unwrap(),
        conf: "{}".into(),
        notes: String::new(),
        options: Default::default(),
        source_location: format!("apps/{app}/builds/{id}/source.tar.gz"),
    }
}

fn compile_took_10_ms() -> kiln_domain::BuildProfile {
    kiln_domain::BuildProfile {
        stages_ms: [("compile".to_owned(), 10)].into(),
        ..Default::default()
    }
}

fn new_version(build: BuildId) -> NewVersion {
    NewVersion {
        binary_location: format!("b/{build}/plugin.wasm"),
        binary_sha256: "ab".repeat(32),
        binary_size: 1234,
        logs_location: format!("b/{build}/build.log"),
        profile: Some(compile_took_10_ms()),
    }
}

/// The worker of the server's shared token.
fn shared() -> WorkerName {
    WorkerName::shared()
}

fn worker(name: &str) -> WorkerName {
    WorkerName::parse(name).unwrap()
}

async fn owner_with_app(store: &MetaStore) -> (OwnerId, AppId) {
    let owner = store.create_owner("test").await.unwrap();
    let app = store
        .create_application(owner, "edge-auth", "")
        .await
        .unwrap();
    (owner, app.id)
}

async fn applications_are_private_to_their_owner(db: TestDb) {
    let store = &db.store;
    let alice = store.create_owner("alice").await.unwrap();
    let bob = store.create_owner("bob").await.unwrap();
    let app = store.create_application(alice, "a", "notes").await.unwrap();
    assert_eq!(store.get_application(alice, app.id).await.unwrap(), app);
    assert!(matches!(
        store.get_application(bob, app.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.list_applications(bob).await.unwrap().is_empty());
    assert!(matches!(
        store.update_application(bob, app.id, Some("x"), None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_application(bob, app.id).await,
        Err(StoreError::NotFound)
    ));
    let renamed = store
        .update_application(alice, app.id, Some("b"), None)
        .await
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.notes.as_str()),
        ("b", "notes")
    );
    assert_eq!(store.list_applications(alice).await.unwrap(), vec![renamed]);
}

async fn tokens_resolve_to_owners(db: TestDb) {
    let store = &db.store;
    let owner = store.create_owner("o").await.unwrap();
    store.add_token(owner, "hash-1").await.unwrap();
    assert_eq!(store.owner_by_token("hash-1").await.unwrap(), Some(owner));
    assert_eq!(store.owner_by_token("hash-2").await.unwrap(), None);
}

async fn owners_can_be_created_by_id(db: TestDb) {
    let store = &db.store;
    store.ensure_owner(OwnerId(5), "five").await.unwrap();
    store.ensure_owner(OwnerId(5), "again").await.unwrap();
    assert!(store.owner_exists(OwnerId(5)).await.unwrap());
    assert_eq!(store.owner_count().await.unwrap(), 1);
    // The next generated id does not collide with the chosen one.
    assert_eq!(store.create_owner("next").await.unwrap(), OwnerId(6));
}

async fn duplicate_live_versions_conflict(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let first = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    assert_eq!(first.state, BuildState::Queued);
    assert!(matches!(
        store.create_build(&new_build(owner, app, "1.0.0")).await,
        Err(StoreError::Conflict(_))
    ));
    // A cancelled version number may be uploaded again.
    store.cancel_build(owner, first.id).await.unwrap();
    store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
}

async fn builds_list_newest_first_with_filters(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let other_app = store
        .create_application(owner, "other", "")
        .await
        .unwrap()
        .id;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .create_build(&new_build(owner, app, &format!("1.0.{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    store
        .create_build(&new_build(owner, other_app, "9.0.0"))
        .await
        .unwrap();
    store.cancel_build(owner, ids[1]).await.unwrap();

    let only_app = BuildFilter {
        application_id: Some(app),
        state: None,
    };
    let all = store
        .list_builds(
            owner,
            &only_app,
            Page {
                limit: 100,
                offset: 0,
                after: None,
            },
        )
        .await
        .unwrap();
    let listed: Vec<_> = all.iter().map(|b| b.id).collect();
    assert_eq!(listed, ids.iter().rev().copied().collect::<Vec<_>>());

    let page2 = store
        .list_builds(
            owner,
            &only_app,
            Page {
                limit: 2,
                offset: 2,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|b| b.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );

    let cancelled = BuildFilter {
        application_id: None,
        state: Some(BuildState::Cancelled),
    };
    let got = store
        .list_builds(owner, &cancelled, Page::default())
        .await
        .unwrap();
    assert_eq!(got.iter().map(|b| b.id).collect::<Vec<_>>(), vec![ids[1]]);

    let stranger = store.create_owner("s").await.unwrap();
    assert!(
        store
            .list_builds(stranger, &BuildFilter::default(), Page::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn owners_take_turns_in_the_queue(db: TestDb) {
    let store = &db.store;
    let (alice, alices_app) = owner_with_app(store).await;
    let (bob, bobs_app) = owner_with_app(store).await;
    let mut alices = Vec::new();
    for version in ["1.0.0", "1.0.1", "1.0.2"] {
        let build = new_build(alice, alices_app, version);
        alices.push(store.create_build(&build).await.unwrap().id);
    }
    let bobs = store
        .create_build(&new_build(bob, bobs_app, "2.0.0"))
        .await
        .unwrap()
        .id;
    assert_eq!(store.unfinished_builds(alice).await.unwrap(), 3);
    let mut claimed = Vec::new();
    while let Some(next) = store.claim_next(LEASE, &shared()).await.unwrap() {
        claimed.push(next.build.id);
    }
    // Bob's one build, queued last, goes as soon as Alice has one running.
    assert_eq!(claimed, vec![alices[0], bobs, alices[1], alices[2]]);
    assert_eq!(store.unfinished_builds(alice).await.unwrap(), 3, "running");
    let stranger = store.create_owner("stranger").await.unwrap();
    assert_eq!(store.unfinished_builds(stranger).await.unwrap(), 0);
}

async fn simultaneous_uploads_respect_the_unfinished_limit(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let uploads = (0..10).map(|i| {
        let build = new_build(owner, app, &format!("1.0.{i}"));
        async move { store.create_build_within(&build, 3).await }
    });
    let results = futures::future::join_all(uploads).await;
    let queued = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(queued, 3, "{results:?}");
    assert!(results.iter().all(|r| matches!(
        r,
        Ok(_) | Err(StoreError::TooManyUnfinished { limit: 3, .. })
    )));
    assert_eq!(store.unfinished_builds(owner).await.unwrap(), 3);
    // Another owner is not held back by this one.
    let (other, others_app) = owner_with_app(store).await;
    store
        .create_build_within(&new_build(other, others_app, "1.0.0"), 3)
        .await
        .unwrap();
}

async fn a_claimed_build_succeeds_into_a_version(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.2.3"))
        .await
        .unwrap();
    let claimed = store
        .claim_next(LEASE, &shared())
        .await
        .unwrap()
        .expect("a queued build");
    assert_eq!(claimed.build.id, build.id);
    assert_eq!(claimed.build.state, BuildState::Running);
    assert_eq!(claimed.build.attempt, 1);
    assert!(
        store.claim_next(LEASE, &shared()).await.unwrap().is_none(),
        "queue should be empty"
    );

    store
        .heartbeat(build.id, claimed.lease_id, &shared(), LEASE)
        .await
        .unwrap();
    let stale = uuid::Uuid::new_v4();
    assert!(matches!(
        store.heartbeat(build.id, stale, &shared(), LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .complete_success(build.id, stale, &new_version(build.id))
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.get_version(owner, build.id).await,
        Err(StoreError::NotFound)
    ));

    let version = store
        .complete_success(build.id, claimed.lease_id, &new_version(build.id))
        .await
        .unwrap();
    assert_eq!(version.id, build.id);
    assert_eq!(version.version.to_string(), "1.2.3");
    assert_eq!(version.binary_size, 1234);
    let done = store.get_build(owner, build.id).await.unwrap();
    assert_eq!(done.state, BuildState::Succeeded);
    assert!(done.finished.is_some());
    assert_eq!(done.profile, Some(compile_took_10_ms()));
    // A second report with the same lease changes nothing.
    assert!(matches!(
        store
            .complete_failure(build.id, claimed.lease_id, "l", "late", None)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store.get_build(owner, build.id).await.unwrap().state,
        BuildState::Succeeded
    );
    // The version number is now taken.
    assert!(matches!(
        store.create_build(&new_build(owner, app, "1.2.3")).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_failed_build_keeps_its_logs(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let claimed = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    let failed = store
        .complete_failure(
            build.id,
            claimed.lease_id,
            "logs/here",
            "rustc failed",
            None,
        )
        .await
        .unwrap();
    assert_eq!(failed.state, BuildState::Failed);
    assert_eq!(failed.logs_location.as_deref(), Some("logs/here"));
    assert_eq!(failed.error.as_deref(), Some("rustc failed"));
    assert!(matches!(
        store.get_version(owner, build.id).await,
        Err(StoreError::NotFound)
    ));
}

async fn crashes_are_retried_then_final(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let claimed = store
            .claim_next(LEASE, &shared())
            .await
            .unwrap()
            .expect("build is queued again");
        assert_eq!(claimed.build.attempt, attempt);
        let after = store
            .report_crash(build.id, claimed.lease_id, None, "disk full", 3)
            .await
            .unwrap();
        let expected = if attempt < 3 {
            BuildState::Queued
        } else {
            BuildState::Crashed
        };
        assert_eq!(after.state, expected);
    }
    assert!(store.claim_next(LEASE, &shared()).await.unwrap().is_none());
}

fn database_error<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Database(_)))
}

/// A lost lease and a database that cannot answer are different errors:
/// a worker drops a build on the first, and must not on the second.
async fn a_database_error_is_not_a_lost_lease(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let claimed = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    let stale = uuid::Uuid::new_v4();
    assert!(matches!(
        store.report_crash(build.id, stale, None, "x", 3).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .report_crash(BuildId::new(), stale, None, "x", 3)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    store.close().await;
    let lease = claimed.lease_id;
    let crash = store.report_crash(build.id, lease, None, "x", 3).await;
    assert!(database_error(&crash), "{crash:?}");
    let beat = store.heartbeat(build.id, lease, &shared(), LEASE).await;
    assert!(database_error(&beat), "{beat:?}");
    let leased = store.leased_build(build.id, lease, &shared()).await;
    assert!(database_error(&leased), "{leased:?}");
    let failed = store
        .complete_failure(build.id, lease, "logs", "x", None)
        .await;
    assert!(database_error(&failed), "{failed:?}");
    // The cause is kept, for the log.
    let e = crash.unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e}");
}

async fn expired_leases_are_requeued_then_crashed(db: TestDb) {
    // The store's clock stands still until the test moves it on.
    let clock = kiln_store::Clock::manual(chrono::Utc::now());
    let store = &db.store.clone().with_clock(clock.clone());
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    // Queued later, so claimed after it.
    clock.advance(Duration::from_millis(1));
    let live = store
        .create_build(&new_build(owner, app, "2.0.0"))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let claimed = store
            .claim_next(Duration::ZERO, &shared())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (claimed.build.id, claimed.build.attempt),
            (build.id, attempt)
        );
        assert_eq!(
            store.reap_expired(3).await.unwrap(),
            0,
            "a lease that ends now has not expired yet"
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(store.reap_expired(3).await.unwrap(), 1);
        // The expired lease can no longer report.
        assert!(matches!(
            store
                .complete_success(build.id, claimed.lease_id, &new_version(build.id))
                .await,
            Err(StoreError::LeaseLost(_))
        ));
        let expected = if attempt < 3 {
            BuildState::Queued
        } else {
            BuildState::Crashed
        };
        assert_eq!(
            store.get_build(owner, build.id).await.unwrap().state,
            expected
        );
    }
    // A build whose worker heartbeats is left alone.
    let claimed = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    assert_eq!(claimed.build.id, live.id);
    assert_eq!(store.reap_expired(3).await.unwrap(), 0);
    assert_eq!(
        store.get_build(owner, live.id).await.unwrap().state,
        BuildState::Running
    );
}

async fn cancelling_stops_the_lease(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let claimed = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    let stranger = store.create_owner("s").await.unwrap();
    assert!(matches!(
        store.cancel_build(stranger, build.id).await,
        Err(StoreError::NotFound)
    ));
    let cancelled = store.cancel_build(owner, build.id).await.unwrap();
    assert_eq!(cancelled.state, BuildState::Cancelled);
    assert!(matches!(
        store
            .heartbeat(build.id, claimed.lease_id, &shared(), LEASE)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.cancel_build(owner, build.id).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn concurrent_claims_take_each_build_once(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    for i in 0..12 {
        store
            .create_build(&new_build(owner, app, &format!("1.0.{i}")))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = store.claim_next(LEASE, &shared()).await.unwrap() {
                got.push(c.build.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((n, all.len()), (12, 12));
}

async fn versions_update_and_delete(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let mut ids = Vec::new();
    for v in ["1.0.0", "1.1.0"] {
        let b = store.create_build(&new_build(owner, app, v)).await.unwrap();
        let c = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
        store
            .complete_success(b.id, c.lease_id, &new_version(b.id))
            .await
            .unwrap();
        ids.push(b.id);
    }
    let listed = store.list_versions(owner, Some(app)).await.unwrap();
    assert_eq!(
        listed.iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );

    let clash = VersionPatch {
        version: Some("1.1.0".parse().unwrap()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_version(owner, ids[0], &clash).await,
        Err(StoreError::Conflict(_))
    ));
    let patch = VersionPatch {
        version: Some("1.0.1".parse().unwrap()),
        notes: Some("hotfix".into()),
        ..Default::default()
    };
    let updated = store.update_version(owner, ids[0], &patch).await.unwrap();
    assert_eq!(
        (updated.version.to_string().as_str(), updated.notes.as_str()),
        ("1.0.1", "hotfix")
    );
    assert_eq!(
        store
            .get_build(owner, ids[0])
            .await
            .unwrap()
            .version
            .to_string(),
        "1.0.1"
    );

    let stranger = store.create_owner("s").await.unwrap();
    assert!(matches!(
        store.delete_version(stranger, ids[0]).await,
        Err(StoreError::NotFound)
    ));
    store.delete_version(owner, ids[0]).await.unwrap();
    assert!(matches!(
        store.get_version(owner, ids[0]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_build(owner, ids[0]).await,
        Err(StoreError::NotFound)
    ));
}

async fn deleting_an_application_removes_builds_and_versions(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let b = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let c = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    store
        .complete_success(b.id, c.lease_id, &new_version(b.id))
        .await
        .unwrap();
    let queued = store
        .create_build(&new_build(owner, app, "2.0.0"))
        .await
        .unwrap();
    store.delete_application(owner, app).await.unwrap();
    assert!(matches!(
        store.get_version(owner, b.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_build(owner, queued.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.claim_next(LEASE, &shared()).await.unwrap().is_none());
}

async fn queued_builds_survive_a_restart(db: TestDb) {
    let (owner, app) = owner_with_app(&db.store).await;
    let queued = db
        .store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let store = db.reopen().await;
    assert_eq!(
        store.get_build(owner, queued.id).await.unwrap().state,
        BuildState::Queued
    );
    let claimed = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    assert_eq!(claimed.build.id, queued.id);
}

async fn worker_tokens_are_created_resolved_and_revoked(db: TestDb) {
    let store = &db.store;
    let host1 = worker("build-host-1");
    store.create_worker(&host1, "hash-1").await.unwrap();
    store
        .create_worker(&worker("build-host-2"), "hash-2")
        .await
        .unwrap();
    assert_eq!(
        store.worker_by_token("hash-1").await.unwrap(),
        Some(host1.clone())
    );
    assert_eq!(store.worker_by_token("nope").await.unwrap(), None);
    // Worker tokens are not owner tokens.
    assert_eq!(store.owner_by_token("hash-1").await.unwrap(), None);
    for (name, hash) in [("build-host-1", "hash-3"), (WorkerName::SHARED, "hash-4")] {
        let refused = store.create_worker(&worker(name), hash).await;
        assert!(
            matches!(&refused, Err(StoreError::Conflict(m)) if m.contains(name)),
            "{refused:?}"
        );
    }

    assert_eq!(
        store.revoke_worker(&host1, 3).await.unwrap(),
        Orphaned::default()
    );
    assert_eq!(store.worker_by_token("hash-1").await.unwrap(), None);
    assert!(matches!(
        store.revoke_worker(&host1, 3).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.revoke_worker(&worker("nobody"), 3).await,
        Err(StoreError::NotFound)
    ));
    // A revoked name is never given out again.
    assert!(matches!(
        store.create_worker(&host1, "hash-5").await,
        Err(StoreError::Conflict(_))
    ));
    let listed = store.list_workers().await.unwrap();
    let names: Vec<_> = listed.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["build-host-1", "build-host-2"]);
    assert!(listed[0].revoked.is_some() && listed[1].revoked.is_none());

    // By token: an owner's is deleted, a worker's revoked.
    let owner = store.create_owner("o").await.unwrap();
    store.add_token(owner, "owner-hash").await.unwrap();
    store.add_token(owner, "owner-hash-2").await.unwrap();
    assert_eq!(
        store.revoke_token("owner-hash", 3).await.unwrap(),
        Revoked::Owner(owner)
    );
    assert_eq!(store.owner_by_token("owner-hash").await.unwrap(), None);
    assert_eq!(
        store.owner_by_token("owner-hash-2").await.unwrap(),
        Some(owner)
    );
    assert_eq!(
        store.revoke_token("hash-2", 3).await.unwrap(),
        Revoked::Worker(worker("build-host-2"), Orphaned::default())
    );
    assert_eq!(store.worker_by_token("hash-2").await.unwrap(), None);
    for gone in ["owner-hash", "hash-2", "hash-1", "unknown"] {
        assert!(matches!(
            store.revoke_token(gone, 3).await,
            Err(StoreError::NotFound)
        ));
    }
}

async fn a_worker_acts_only_on_builds_it_claimed(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let (a, b) = (worker("a"), worker("b"));
    store.create_worker(&a, "hash-a").await.unwrap();
    store.create_worker(&b, "hash-b").await.unwrap();
    let build = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    assert_eq!(build.worker, None, "nobody has claimed it yet");
    let claimed = store.claim_next(LEASE, &a).await.unwrap().unwrap();
    assert_eq!(claimed.build.worker.as_deref(), Some("a"));
    let lease = claimed.lease_id;

    // B holding A's lease id is refused like a stale lease.
    assert!(matches!(
        store.heartbeat(build.id, lease, &b, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.leased_build(build.id, lease, &b).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store.leased_build(build.id, lease, &shared()).await,
        Err(StoreError::LeaseLost(_))
    ));
    let expires = store.heartbeat(build.id, lease, &a, LEASE).await.unwrap();
    let leased = store.leased_build(build.id, lease, &a).await.unwrap();
    assert_eq!(leased.build.id, build.id);
    assert_eq!(
        leased.lease_expires, expires,
        "the lease ends when its last heartbeat said"
    );
    store
        .complete_success(build.id, lease, &new_version(build.id))
        .await
        .unwrap();
    // The record names its builder once it has ended.
    let done = store.get_build(owner, build.id).await.unwrap();
    assert_eq!(done.state, BuildState::Succeeded);
    assert_eq!(done.worker.as_deref(), Some("a"));
}

async fn revoking_a_worker_requeues_its_running_builds(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let (a, b) = (worker("a"), worker("b"));
    store.create_worker(&a, "hash-a").await.unwrap();
    store.create_worker(&b, "hash-b").await.unwrap();
    let first = store
        .create_build(&new_build(owner, app, "1.0.0"))
        .await
        .unwrap();
    let second = store
        .create_build(&new_build(owner, app, "2.0.0"))
        .await
        .unwrap();
    let of_a = store.claim_next(LEASE, &a).await.unwrap().unwrap();
    let of_b = store.claim_next(LEASE, &b).await.unwrap().unwrap();
    assert_eq!((of_a.build.id, of_b.build.id), (first.id, second.id));

    let orphaned = store.revoke_worker(&a, 3).await.unwrap();
    assert_eq!(
        orphaned,
        Orphaned {
            requeued: 1,
            crashed: 0
        }
    );
    let requeued = store.get_build(owner, first.id).await.unwrap();
    assert_eq!(requeued.state, BuildState::Queued);
    assert_eq!(requeued.attempt, 1);
    assert_eq!(
        requeued.error.as_deref(),
        Some("its worker's token was revoked; queued again")
    );
    assert!(matches!(
        store.heartbeat(first.id, of_a.lease_id, &a, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    // B's build goes on; A claims nothing more, even with a build queued.
    store
        .heartbeat(second.id, of_b.lease_id, &b, LEASE)
        .await
        .unwrap();
    assert!(store.claim_next(LEASE, &a).await.unwrap().is_none());
    let again = store.claim_next(LEASE, &b).await.unwrap().unwrap();
    assert_eq!((again.build.id, again.build.attempt), (first.id, 2));
    assert_eq!(again.build.worker.as_deref(), Some("b"));

    // With its attempts used, a build of a revoked worker ends crashed.
    let orphaned = store.revoke_worker(&b, 2).await.unwrap();
    assert_eq!(
        orphaned,
        Orphaned {
            requeued: 1,
            crashed: 1
        }
    );
    let crashed = store.get_build(owner, first.id).await.unwrap();
    assert_eq!(crashed.state, BuildState::Crashed);
    assert!(crashed.finished.is_some());
    assert_eq!(crashed.worker.as_deref(), Some("b"));
    assert_eq!(
        store.get_build(owner, second.id).await.unwrap().state,
        BuildState::Queued
    );
}

/// A succeeded version `v` of `app` whose binary has the sha256 `sha`.
async fn version_with_sha(
    store: &MetaStore,
    owner: OwnerId,
    app: AppId,
    v: &str,
    sha: &str,
) -> BuildId {
    let b = store.create_build(&new_build(owner, app, v)).await.unwrap();
    let c = store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    let mut new = new_version(b.id);
    new.binary_sha256 = sha.to_owned();
    store
        .complete_success(b.id, c.lease_id, &new)
        .await
        .unwrap();
    b.id
}

async fn channels_promote_roll_back_and_hold_their_versions(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let v1 = version_with_sha(store, owner, app, "1.0.0", &"1".repeat(64)).await;
    let v2 = version_with_sha(store, owner, app, "2.0.0", &"2".repeat(64)).await;
    let prod = ChannelName::parse("production").unwrap();

    assert_eq!(
        store.rollback(owner, app, &prod, "t").await.unwrap(),
        Err(ChannelRefusal::NoSuchChannel)
    );
    let c = store
        .promote(owner, app, &prod, v1, "owner a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.revision, c.version.id), (1, v1));
    assert_eq!(
        c.version.artifact,
        format!("/artifact/{}.wasm", "1".repeat(64))
    );
    assert_eq!(
        store.rollback(owner, app, &prod, "t").await.unwrap(),
        Err(ChannelRefusal::NothingToRollBackTo)
    );
    // Promoting the version already deployed changes nothing.
    let same = store
        .promote(owner, app, &prod, v1, "b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same.revision, 1);
    let c = store
        .promote(owner, app, &prod, v2, "owner b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.revision, c.version.id), (2, v2));
    assert_eq!(store.channel_revision(app, &prod).await.unwrap(), Some(2));

    // A deployed version cannot be deleted; the refusal names the channel.
    match store.delete_version(owner, v2).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("production"), "{m}"),
        other => panic!("deleted a deployed version: {other:?}"),
    }
    let back = store
        .rollback(owner, app, &prod, "owner c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((back.revision, back.version.id), (3, v1));
    let history: Vec<_> = back
        .history
        .iter()
        .map(|h| (h.revision, h.version_id, h.action, h.by.as_str()))
        .collect();
    assert_eq!(
        history,
        vec![
            (3, v1, ChannelAction::Rollback, "owner c"),
            (2, v2, ChannelAction::Promote, "owner b"),
            (1, v1, ChannelAction::Promote, "owner a"),
        ]
    );
    // v2 is free now, and once deleted the channel cannot return to it.
    store.delete_version(owner, v2).await.unwrap();
    assert_eq!(
        store.rollback(owner, app, &prod, "t").await.unwrap(),
        Err(ChannelRefusal::PreviousVersionDeleted(v2))
    );

    // Another owner sees nothing and cannot promote.
    let stranger = store.create_owner("s").await.unwrap();
    assert!(matches!(
        store.get_channel(stranger, app, &prod).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store.promote(stranger, app, &prod, v1, "s").await.unwrap(),
        Err(ChannelRefusal::NoSuchVersion)
    );
    assert!(store.list_channels(stranger, app).await.unwrap().is_empty());
    let staging = ChannelName::parse("staging").unwrap();
    store
        .promote(owner, app, &staging, v1, "a")
        .await
        .unwrap()
        .unwrap();
    let names: Vec<_> = store
        .list_channels(owner, app)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["production", "staging"]);

    // Versions are found by content; deleting the application drops its channels.
    let found = store
        .version_by_sha256(&"1".repeat(64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, v1);
    assert!(
        store
            .version_by_sha256(&"2".repeat(64))
            .await
            .unwrap()
            .is_none()
    );
    store.delete_application(owner, app).await.unwrap();
    assert!(
        store
            .version_by_sha256(&"1".repeat(64))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.channel_revision(app, &prod).await.unwrap(), None);
}

async fn edge_tokens_resolve_and_revoke(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    store
        .add_edge_token(owner, Some(app), "h-app")
        .await
        .unwrap();
    store.add_edge_token(owner, None, "h-all").await.unwrap();
    assert_eq!(
        store.edge_by_token("h-app").await.unwrap(),
        Some((owner, Some(app)))
    );
    assert_eq!(
        store.edge_by_token("h-all").await.unwrap(),
        Some((owner, None))
    );
    // An edge token is not an owner's token.
    assert_eq!(store.owner_by_token("h-all").await.unwrap(), None);
    assert_eq!(store.edge_token_counts().await.unwrap(), vec![(owner, 2)]);
    assert_eq!(
        store.revoke_token("h-app", 3).await.unwrap(),
        Revoked::Edge(owner)
    );
    assert_eq!(store.edge_by_token("h-app").await.unwrap(), None);
}

async fn image_digests_find_modules_and_their_versions(db: TestDb) {
    let store = &db.store;
    let (owner, app) = owner_with_app(store).await;
    let sha = "3".repeat(64);
    let v1 = version_with_sha(store, owner, app, "1.0.0", &sha).await;
    version_with_sha(store, owner, app, "1.0.1", &sha).await;
    let digests = |n: &str| ImageDigests {
        manifest: format!("sha256:m{n}"),
        config: format!("sha256:c{n}"),
        layer: format!("sha256:l{n}"),
    };
    assert_eq!(
        store.module_by_image_digest("sha256:m1").await.unwrap(),
        None
    );
    store.record_image(&sha, &digests("1")).await.unwrap();
    for digest in ["sha256:m1", "sha256:c1", "sha256:l1"] {
        assert_eq!(
            store
                .module_by_image_digest(digest)
                .await
                .unwrap()
                .as_deref(),
            Some(sha.as_str())
        );
    }
    // Recording again replaces the digests.
    store.record_image(&sha, &digests("2")).await.unwrap();
    assert_eq!(
        store.module_by_image_digest("sha256:l1").await.unwrap(),
        None
    );
    assert!(
        store
            .module_by_image_digest("sha256:l2")
            .await
            .unwrap()
            .is_some()
    );

    // The oldest version of this application with the module, and only the owner's.
    let found = store.app_version_by_sha256(owner, app, &sha).await.unwrap();
    assert_eq!(found.map(|v| v.id), Some(v1));
    let stranger = store.create_owner("stranger").await.unwrap();
    assert!(
        store
            .app_version_by_sha256(stranger, app, &sha)
            .await
            .unwrap()
            .is_none()
    );
    let other = store.create_application(owner, "other", "").await.unwrap();
    assert!(
        store
            .app_version_by_sha256(owner, other.id, &sha)
            .await
            .unwrap()
            .is_none()
    );
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $case() {
                if let Some(db) = super::sqlite_db().await { super::$case(db).await }
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() {
                if let Some(db) = super::postgres_db().await { super::$case(db).await }
            })*
        }
    };
}

on_both_backends!(
    applications_are_private_to_their_owner,
    tokens_resolve_to_owners,
    owners_can_be_created_by_id,
    duplicate_live_versions_conflict,
    builds_list_newest_first_with_filters,
    a_claimed_build_succeeds_into_a_version,
    owners_take_turns_in_the_queue,
    simultaneous_uploads_respect_the_unfinished_limit,
    a_failed_build_keeps_its_logs,
    crashes_are_retried_then_final,
    a_database_error_is_not_a_lost_lease,
    expired_leases_are_requeued_then_crashed,
    cancelling_stops_the_lease,
    concurrent_claims_take_each_build_once,
    versions_update_and_delete,
    deleting_an_application_removes_builds_and_versions,
    queued_builds_survive_a_restart,
    worker_tokens_are_created_resolved_and_revoked,
    a_worker_acts_only_on_builds_it_claimed,
    revoking_a_worker_requeues_its_running_builds,
    channels_promote_roll_back_and_hold_their_versions,
    edge_tokens_resolve_and_revoke,
    image_digests_find_modules_and_their_versions,
);

/// The queue's hot statements read indexes, never every build: their cost
/// must not grow with the depth of the queue. SQLite only: PostgreSQL
/// rightly scans a table this small, and its plans at depth are recorded
/// by `scripts/bench queue` in `bench/results/queue.md`.
#[tokio::test]
async fn the_queue_reads_indexes_only() {
    let Some(db) = sqlite_db().await else { return };
    let store = &db.store;
    let (alice, alices_app) = owner_with_app(store).await;
    let (bob, bobs_app) = owner_with_app(store).await;
    for n in 0..20 {
        let (owner, app) = if n % 2 == 0 {
            (alice, alices_app)
        } else {
            (bob, bobs_app)
        };
        store
            .create_build(&new_build(owner, app, &format!("1.0.{n}")))
            .await
            .unwrap();
    }
    store.claim_next(LEASE, &shared()).await.unwrap().unwrap();
    let plans = store.queue_plans(alice).await.unwrap();
    assert_eq!(plans.len(), 5);
    for (name, plan) in plans {
        println!("{name}:\n{plan}");
        // "SCAN t" without an index reads the whole table t. The claim's
        // own common tables (q, next_owner) hold one row per owner with
        // queued builds, and the constant row starts its recursion.
        let full_scans: Vec<&str> = plan
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("SCAN ") && !l.contains("USING"))
            .filter(|l| !["SCAN q", "SCAN next_owner", "SCAN CONSTANT ROW"].contains(l))
            .collect();
        assert!(
            full_scans.is_empty(),
            "{name} reads a whole table: {full_scans:?}\n{plan}"
        );
    }
}
