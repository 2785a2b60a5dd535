//! The pool against a fake executor: capacity, queueing to the deadline, cancellation
//! at every await point, keep-alive, refill, failing and slow creates, runtime-level
//! instances.

use super::*;
use bytes::Bytes;

use crate::testing::Fake;

fn spec(policy: Policy) -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec {
        name: "f".into(),
        version: 1,
        runtime: "fake".into(),
        digest: String::new(),
        limits: Default::default(),
        policy,
        env: Default::default(),
        allow_outbound: Default::default(),
    })
}

fn policy(preload: Preload, max_instances: u32, max_queue: u32) -> Policy {
    Policy {
        preload,
        max_instances,
        max_queue,
        ..Policy::default()
    }
}

fn pool_with(fake: Fake, policy: Policy) -> Arc<Pool<Fake>> {
    Pool::for_function(
        Arc::new(fake),
        spec(policy),
        (),
        Arc::new(RuntimePools::new()),
    )
}

fn request() -> CallRequest {
    CallRequest {
        call_id: "c".into(),
        input: Bytes::from_static(b"{}"),
        http: None,
    }
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

fn counts(pool: &Pool<Fake>) -> (usize, usize, usize, usize, usize) {
    let st = pool.lock();
    (
        st.idle.len(),
        st.busy,
        st.starting,
        st.waiting,
        st.destroying,
    )
}

/// Waits until `check` holds, for at most two seconds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let until = soon(2000);
    while !check() {
        assert!(Instant::now() < until, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn calls_beyond_capacity_and_queue_are_refused_at_once() {
    let fake = Fake {
        invoke_delay: Duration::from_millis(300),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 2, 0));
    let (a, b) = (pool.clone(), pool.clone());
    let first = tokio::spawn(async move { a.call_in(request(), soon(5000)).await });
    let second = tokio::spawn(async move { b.call_in(request(), soon(5000)).await });
    eventually("two calls busy", || counts(&pool).1 == 2).await;
    let refused = Instant::now();
    let err = pool.call_in(request(), soon(5000)).await.unwrap_err();
    assert!(matches!(err, Error::AtCapacity { .. }), "{err}");
    assert!(
        err.to_string().contains("all 2 instances are busy"),
        "{err}"
    );
    assert!(refused.elapsed() < Duration::from_millis(250));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(counts(&pool), (2, 0, 0, 0, 0));
}

#[tokio::test]
async fn a_queued_call_waits_until_its_deadline_and_no_longer() {
    let fake = Fake {
        invoke_delay: Duration::from_millis(400),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 1, 4));
    let busy = pool.clone();
    let running = tokio::spawn(async move { busy.call_in(request(), soon(5000)).await });
    eventually("one call busy", || counts(&pool).1 == 1).await;

    let short = Instant::now();
    let err = pool.call_in(request(), soon(100)).await.unwrap_err();
    assert!(matches!(err, Error::AtCapacity { .. }), "{err}");
    assert!(
        err.to_string().contains("before the call's deadline"),
        "{err}"
    );
    assert!(short.elapsed() >= Duration::from_millis(90));
    assert_eq!(counts(&pool).3, 0, "the waiting count is given back");

    // A call with time to spare gets the instance the first one frees.
    let outcome = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(outcome.result, CallResult::Done);
    assert_eq!(outcome.start, StartKind::Warm);
    assert!(outcome.timings.queue > Duration::from_millis(100));
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_call_dropped_while_queued_gives_its_place_back() {
    let fake = Fake {
        invoke_delay: Duration::from_millis(300),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 1, 1));
    let busy = pool.clone();
    let running = tokio::spawn(async move { busy.call_in(request(), soon(5000)).await });
    eventually("one call busy", || counts(&pool).1 == 1).await;
    let queued = pool.clone();
    let waiter = tokio::spawn(async move { queued.call_in(request(), soon(5000)).await });
    eventually("one call waiting", || counts(&pool).3 == 1).await;
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(counts(&pool).3, 0);
    // The queue has room again.
    running.await.unwrap().unwrap();
    pool.call_in(request(), soon(5000)).await.unwrap();
}

#[tokio::test]
async fn a_call_dropped_while_its_instance_starts_gives_its_place_back() {
    let fake = Fake {
        create_delay: Duration::from_millis(300),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 1, 0));
    let starting = pool.clone();
    let call = tokio::spawn(async move { starting.call_in(request(), soon(5000)).await });
    eventually("one call busy", || counts(&pool).1 == 1).await;
    call.abort();
    let _ = call.await;
    assert_eq!(counts(&pool), (0, 0, 0, 0, 0));
    assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 0);
    // The only slot is free again.
    pool.call_in(request(), soon(5000)).await.unwrap();
}

#[tokio::test]
async fn a_call_dropped_mid_call_destroys_its_instance_and_frees_the_slot() {
    let fake = Fake {
        invoke_delay: Duration::from_millis(500),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 1, 0));
    let running = pool.clone();
    let call = tokio::spawn(async move { running.call_in(request(), soon(5000)).await });
    eventually("the instance exists", || {
        pool.executor.alive.load(Ordering::SeqCst) == 1
    })
    .await;
    call.abort();
    let _ = call.await;
    eventually("the instance is destroyed", || {
        pool.executor.alive.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually("nothing counted", || counts(&pool) == (0, 0, 0, 0, 0)).await;
    let stats = FunctionPool(pool.clone()).stats();
    assert_eq!(stats.destroyed.get("cancelled"), Some(&1), "{stats:?}");
    // A fresh instance serves the next call: the cancelled one is never reused.
    let outcome = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(outcome.logs, Bytes::from("1"));
}

#[tokio::test]
async fn a_slow_removal_happens_after_the_answer_and_still_holds_its_slot() {
    let fake = Fake {
        removal: Duration::from_millis(300),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::None, 1, 64));
    let first = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(first.start, StartKind::Cold);
    // Answered while the instance is still being removed...
    assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 1);
    assert_eq!(counts(&pool).4, 1);

    // ...and it still counts against max_instances = 1: the next call waits for
    // the removal instead of running a second instance beside it.
    let waited = Instant::now();
    pool.call_in(request(), soon(5000)).await.unwrap();
    assert!(
        waited.elapsed() >= Duration::from_millis(200),
        "{:?}",
        waited.elapsed()
    );
    eventually("both removed", || {
        pool.executor.alive.load(Ordering::SeqCst) == 0 && counts(&pool).4 == 0
    })
    .await;
    let stats = FunctionPool(pool.clone()).stats();
    assert_eq!(stats.destroyed.get("policy_none"), Some(&2));
}

#[tokio::test]
async fn idle_instances_past_keep_alive_are_evicted() {
    let pool = pool_with(
        Fake::default(),
        Policy {
            keep_alive: Duration::from_millis(100),
            ..policy(Preload::Function, 4, 4)
        },
    );
    pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(counts(&pool).0, 1, "kept after the call");
    eventually("evicted", || counts(&pool).0 == 0).await;
    let stats = FunctionPool(pool.clone()).stats();
    assert_eq!(stats.destroyed.get("keep_alive"), Some(&1));
    eventually("destroyed", || {
        pool.executor.alive.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn min_warm_is_refilled_in_the_background_and_calls_take_warm_instances() {
    let pool = pool_with(
        Fake::default(),
        Policy {
            min_warm: 2,
            ..policy(Preload::Function, 4, 4)
        },
    );
    eventually("two warm", || counts(&pool).0 == 2).await;
    let outcome = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(outcome.start, StartKind::Warm);
    assert_eq!(outcome.timings.init, Duration::ZERO);
    // The reused instance came back; nothing above max_instances was ever made.
    eventually("still two idle", || counts(&pool).0 == 2).await;
    assert!(pool.executor.alive.load(Ordering::SeqCst) <= 4);
}

#[tokio::test]
async fn creates_see_the_policy_in_force_after_it_changed() {
    let pool = pool_with(Fake::default(), policy(Preload::Function, 4, 4));
    pool.call_in(request(), soon(5000)).await.unwrap();
    // A PATCH to `preload = none` reaches the pool through `follow`.
    FunctionPool(pool.clone()).follow(&spec(policy(Preload::None, 4, 4)));
    pool.call_in(request(), soon(5000)).await.unwrap();
    let seen = pool.executor.created_with.lock().unwrap().clone();
    assert_eq!(seen, vec![Preload::Function, Preload::None]);
}

#[tokio::test]
async fn a_failing_create_fails_the_call_and_the_maintainer_backs_off() {
    let fake = Fake {
        create_fails: true,
        ..Fake::default()
    };
    let pool = pool_with(
        fake,
        Policy {
            min_warm: 1,
            ..policy(Preload::Function, 2, 2)
        },
    );
    let err = pool.call_in(request(), soon(5000)).await.unwrap_err();
    assert!(matches!(err, Error::InstanceStart(_)), "{err}");
    assert_eq!(counts(&pool).1, 0, "the failed call holds nothing");
    // Over 1.5 s an unbacked retry every 250 ms would be 7 attempts; the backoff
    // (0.5 s, 1 s, ...) allows at most 4 (the call's own attempt included).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let attempts = pool.executor.attempts.load(Ordering::SeqCst);
    assert!(attempts <= 4, "{attempts} attempts");
    assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_lost_backend_discards_idle_instances_and_the_pool_refills_soon_after_it_returns() {
    let pool = pool_with(
        Fake::default(),
        Policy {
            min_warm: 2,
            ..policy(Preload::Function, 4, 4)
        },
    );
    eventually("two warm", || counts(&pool).0 == 2).await;

    // The backend goes away, taking the idle instances with it.
    pool.executor.backend_down.store(true, Ordering::SeqCst);
    pool.executor
        .backend_generation
        .fetch_add(1, Ordering::SeqCst);
    let err = pool.call_in(request(), soon(5000)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    eventually("the dead instances destroyed", || {
        pool.destroyed().get("dead") == Some(&2) && pool.executor.alive.load(Ordering::SeqCst) == 0
    })
    .await;
    // Long enough for the doubling backoff of other failures to reach 4 s.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(counts(&pool).0, 0);

    // Back: the pool refills within the unavailable retry, not the full backoff, and
    // calls get instances of the new backend.
    pool.executor.backend_down.store(false, Ordering::SeqCst);
    eventually("two warm again", || counts(&pool).0 == 2).await;
    let outcome = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(outcome.result, CallResult::Done);
    assert_eq!(outcome.start, StartKind::Warm);
}

#[tokio::test]
async fn a_start_past_the_deadline_is_a_timeout_outcome() {
    let fake = Fake {
        create_delay: Duration::from_millis(2000),
        ..Fake::default()
    };
    let pool = pool_with(fake, policy(Preload::Function, 1, 0));
    let t = Instant::now();
    let outcome = pool.call_in(request(), soon(150)).await.unwrap();
    assert!(
        matches!(outcome.result, CallResult::Timeout(_)),
        "{:?}",
        outcome.result
    );
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert_eq!(counts(&pool), (0, 0, 0, 0, 0));
    assert_eq!(pool.executor.alive.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_runtime_level_instance_is_claimed_loaded_and_replaced() {
    let executor = Arc::new(Fake::default());
    let runtime_pools: Arc<RuntimePools<Fake>> = Arc::new(RuntimePools::new());
    let generic = Pool::for_runtime(
        executor.clone(),
        "fake",
        Policy {
            min_warm: 1,
            ..policy(Preload::Runtime, 4, 4)
        },
    );
    runtime_pools.insert("fake".into(), generic.clone());
    let pool = Pool::for_function(
        executor.clone(),
        spec(policy(Preload::Runtime, 4, 4)),
        (),
        runtime_pools,
    );
    eventually("one generic instance", || generic.lock().idle.len() == 1).await;
    let outcome = pool.call_in(request(), soon(5000)).await.unwrap();
    assert_eq!(outcome.start, StartKind::Prewarmed);
    let stats = generic.runtime_stats();
    assert_eq!(stats.left.get("claimed"), Some(&1));
    // The runtime-level pool refills, and the claimed instance stays the function's.
    eventually("refilled", || generic.lock().idle.len() == 1).await;
    assert_eq!(counts(&pool).0, 1);
    assert_eq!(
        FunctionPool(pool.clone()).stats().starts.get("prewarmed"),
        Some(&1)
    );
}
