//! Containers started ahead of the calls that will use them, for functions whose
//! every call gets a fresh container (`preload = none`).
//!
//! Creating and starting a container is most of a cold call's time (the engine's
//! create, runc's start and the interpreter's boot: ~300 ms here, and seconds when
//! many start at once on two cores). This pool does that work before the call: it
//! keeps a few containers of each such function's own image started, hardened
//! exactly as a call's own container, with the agent booted but nothing of the
//! function's loaded — no handler imported, no configuration or secret delivered. A
//! cold call takes one, sends `init` (the function's variables and secrets, then the
//! handler's import), runs, and the container is removed after its call, as before.
//! No container ever serves two calls: one leaves the pool by being popped under its
//! lock, and the pool never sees it again.
//!
//! Bounds: at most `per_kind` ready or starting per kind (function, image, limits),
//! at most `total` across kinds, at most `starting` being started at once. A kind
//! keeps one container more than it has in use (up to `per_kind`), and only while
//! calls come: a kind unused for its `keep` (the function's `keep_alive`) is emptied.
//! [`AheadPool::clear`] empties everything and waits for starts under way (start and
//! shutdown, before the host's leftover containers are removed).
//!
//! Generic over what it holds so its accounting is tested without an engine.

use futures_util::future::BoxFuture;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::Result;

/// How many containers the pool keeps and starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AheadLimits {
    /// Ready or starting containers of one kind (one function version's containers).
    pub per_kind: usize,
    /// Ready or starting containers across all kinds.
    pub total: usize,
    /// Containers being started at once (each start is work for the engine and runc,
    /// which calls' own starts and removals share).
    pub starting: usize,
}

impl Default for AheadLimits {
    fn default() -> Self {
        AheadLimits {
            per_kind: 8,
            total: 32,
            starting: 2,
        }
    }
}

/// How long a kind waits after a failed start before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often unused kinds are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// What the pool holds: something that may have died since it was started.
pub(crate) trait Held: Send + 'static {
    /// Whether it can still be handed to a call.
    fn alive(&self) -> bool;
}

/// Starts one item of a kind from its recipe.
pub(crate) type StartFn<R, T> = Arc<dyn Fn(Arc<R>) -> BoxFuture<'static, Result<T>> + Send + Sync>;

/// The items of one kind.
struct Kind<R, T> {
    recipe: Arc<R>,
    ready: VecDeque<T>,
    starting: usize,
    /// Items of this kind handed out and not yet gone ([`InUse`] guards).
    in_use: usize,
    last_used: Instant,
    keep: Duration,
    retry_at: Option<Instant>,
}

struct State<R, T> {
    kinds: HashMap<String, Kind<R, T>>,
    ready: usize,
    starting: usize,
}

/// A bounded pool of items started ahead of demand, by kind.
pub(crate) struct AheadPool<R, T> {
    limits: AheadLimits,
    start: StartFn<R, T>,
    state: Mutex<State<R, T>>,
    slots: tokio::sync::Semaphore,
    /// Bumped by [`Self::clear`]: a start begun before it does not join the pool.
    epoch: AtomicU64,
    /// Signalled whenever a start ends.
    started: tokio::sync::Notify,
    sweeping: AtomicBool,
}

/// Counts an item of a kind as in use while it lives: the pool keeps one more ready
/// than its kind has in use.
pub(crate) struct InUse<R: Send + Sync + 'static, T: Held> {
    pool: Weak<AheadPool<R, T>>,
    key: String,
}

impl<R: Send + Sync + 'static, T: Held> Drop for InUse<R, T> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade()
            && let Some(kind) = pool.lock().kinds.get_mut(&self.key)
        {
            kind.in_use = kind.in_use.saturating_sub(1);
        }
    }
}

/// What [`AheadPool::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AheadStats {
    /// Kinds (function versions) with containers kept.
    pub kinds: usize,
    /// Containers ready to be taken.
    pub ready: usize,
    /// Containers being started.
    pub starting: usize,
}

impl<R: Send + Sync + 'static, T: Held> AheadPool<R, T> {
    pub(crate) fn new(limits: AheadLimits, start: StartFn<R, T>) -> Arc<Self> {
        Arc::new(AheadPool {
            slots: tokio::sync::Semaphore::new(limits.starting.max(1)),
            limits,
            start,
            state: Mutex::new(State {
                kinds: HashMap::new(),
                ready: 0,
                starting: 0,
            }),
            epoch: AtomicU64::new(0),
            started: tokio::sync::Notify::new(),
            sweeping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<R, T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call of kind `key` wants an item: returns a ready one if there is one, and
    /// the guard counting the call's item (whichever way it gets one) as in use. Then
    /// starts what the kind is short of, in the background. `recipe` and `keep` are
    /// the kind's current ones.
    pub(crate) fn take(
        self: &Arc<Self>,
        key: &str,
        recipe: impl FnOnce() -> R,
        keep: Duration,
    ) -> (Option<T>, InUse<R, T>) {
        let mut dead = Vec::new();
        let taken = {
            let mut st = self.lock();
            let state = &mut *st;
            let kind = state.kinds.entry(key.to_string()).or_insert_with(|| Kind {
                recipe: Arc::new(recipe()),
                ready: VecDeque::new(),
                starting: 0,
                in_use: 0,
                last_used: Instant::now(),
                keep,
                retry_at: None,
            });
            kind.in_use += 1;
            kind.last_used = Instant::now();
            kind.keep = keep;
            let mut taken = None;
            // The newest first: the oldest are the likeliest to have died.
            while let Some(item) = kind.ready.pop_back() {
                state.ready -= 1;
                if item.alive() {
                    taken = Some(item);
                    break;
                }
                dead.push(item);
            }
            taken
        };
        // Dropped outside the lock: a container's drop removes it in the background.
        drop(dead);
        self.fill(key);
        self.sweep_soon();
        let guard = InUse {
            pool: Arc::downgrade(self),
            key: key.to_string(),
        };
        (taken, guard)
    }

    /// Starts items of `key` in the background until it has one more ready or
    /// starting than in use, within the bounds.
    fn fill(self: &Arc<Self>, key: &str) {
        loop {
            let (recipe, epoch) = {
                let mut st = self.lock();
                let state = &mut *st;
                let Some(kind) = state.kinds.get_mut(key) else {
                    return;
                };
                let wanted = (kind.in_use + 1).min(self.limits.per_kind);
                let have = kind.ready.len() + kind.starting;
                let waiting = kind.retry_at.is_some_and(|at| Instant::now() < at);
                if have >= wanted || waiting || state.ready + state.starting >= self.limits.total {
                    return;
                }
                kind.starting += 1;
                state.starting += 1;
                (kind.recipe.clone(), self.epoch.load(Ordering::Acquire))
            };
            let pool = Arc::downgrade(self);
            let start = self.start.clone();
            let key = key.to_string();
            tokio::spawn(async move {
                // Held through the start: the pool is the executor's, and a start
                // ends within its budget.
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let slot = pool.slots.acquire().await;
                let started = start(recipe).await;
                drop(slot);
                pool.finish(&key, epoch, started);
            });
        }
    }

    /// Records the end of a start of `key` begun in `epoch`.
    fn finish(&self, key: &str, epoch: u64, started: Result<T>) {
        let mut unwanted = None;
        {
            let mut st = self.lock();
            let state = &mut *st;
            state.starting -= 1;
            let current = self.epoch.load(Ordering::Acquire) == epoch;
            match (state.kinds.get_mut(key), started) {
                (Some(kind), Ok(item)) if current => {
                    kind.starting -= 1;
                    kind.retry_at = None;
                    kind.ready.push_back(item);
                    state.ready += 1;
                }
                (kind, Ok(item)) => {
                    if let Some(kind) = kind {
                        kind.starting -= 1;
                    }
                    unwanted = Some(item);
                }
                (kind, Err(e)) => {
                    if let Some(kind) = kind {
                        kind.starting -= 1;
                        kind.retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                    tracing::debug!(kind = key, "could not start a container ahead: {e}");
                }
            }
        }
        drop(unwanted);
        self.started.notify_waiters();
    }

    /// Runs the sweeper if it does not run yet: it empties kinds unused for their
    /// `keep`, and ends when no kind is left.
    fn sweep_soon(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let (expired, empty) = pool.expire(Instant::now());
                drop(expired);
                if empty {
                    pool.sweeping.store(false, Ordering::Release);
                    // A take may have come between the check and the store.
                    if pool.lock().kinds.is_empty() || pool.sweeping.swap(true, Ordering::AcqRel) {
                        return;
                    }
                }
            }
        });
    }

    /// Takes out the items of kinds unused for their `keep` at `now`, and forgets
    /// such kinds once nothing of theirs is starting or in use. Also says whether no
    /// kind is left.
    fn expire(&self, now: Instant) -> (Vec<T>, bool) {
        let mut st = self.lock();
        let state = &mut *st;
        let mut expired = Vec::new();
        state.kinds.retain(|_, kind| {
            if now.duration_since(kind.last_used) < kind.keep {
                return true;
            }
            expired.extend(kind.ready.drain(..));
            kind.starting > 0 || kind.in_use > 0
        });
        state.ready -= expired.len();
        (expired, state.kinds.is_empty())
    }

    /// Takes every ready item out and waits (up to `patience`) for the starts under
    /// way, whose items are then not kept: what the caller removes next is
    /// everything. Kinds stay known; calls after this fill them again.
    pub(crate) async fn clear(&self, patience: Duration) -> Vec<T> {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let give_up = Instant::now() + patience;
        loop {
            let started = self.started.notified();
            if self.lock().starting == 0 || Instant::now() >= give_up {
                break;
            }
            let _ = tokio::time::timeout_at(give_up.into(), started).await;
        }
        let mut st = self.lock();
        let state = &mut *st;
        let mut all = Vec::new();
        for kind in state.kinds.values_mut() {
            all.extend(kind.ready.drain(..));
        }
        state.ready = 0;
        all
    }

    /// What the pool holds now.
    pub(crate) fn stats(&self) -> AheadStats {
        let st = self.lock();
        AheadStats {
            kinds: st.kinds.len(),
            ready: st.ready,
            starting: st.starting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    struct Item {
        id: usize,
        alive: Arc<AtomicBool>,
        live: Arc<AtomicUsize>,
    }

    impl Held for Item {
        fn alive(&self) -> bool {
            self.alive.load(Ordering::SeqCst)
        }
    }

    impl Drop for Item {
        fn drop(&mut self) {
            self.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct Counters {
        next: AtomicUsize,
        attempts: AtomicUsize,
        live: Arc<AtomicUsize>,
        alive: Arc<AtomicBool>,
        fail: AtomicBool,
        delay: Duration,
    }

    fn pool(limits: AheadLimits, delay: Duration) -> (Arc<AheadPool<(), Item>>, Arc<Counters>) {
        let counters = Arc::new(Counters {
            next: AtomicUsize::new(0),
            attempts: AtomicUsize::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(AtomicBool::new(true)),
            fail: AtomicBool::new(false),
            delay,
        });
        let c = counters.clone();
        let start: StartFn<(), Item> = Arc::new(move |_recipe| {
            let c = c.clone();
            Box::pin(async move {
                tokio::time::sleep(c.delay).await;
                c.attempts.fetch_add(1, Ordering::SeqCst);
                if c.fail.load(Ordering::SeqCst) {
                    return Err(Error::InstanceStart("no".into()));
                }
                c.live.fetch_add(1, Ordering::SeqCst);
                Ok(Item {
                    id: c.next.fetch_add(1, Ordering::SeqCst),
                    alive: c.alive.clone(),
                    live: c.live.clone(),
                })
            })
        });
        (AheadPool::new(limits, start), counters)
    }

    async fn settle(pool: &AheadPool<(), Item>) {
        for _ in 0..1000 {
            if pool.stats().starting == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("starts did not end: {:?}", pool.stats());
    }

    const KEEP: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_ready_item_goes_to_one_taker_only() {
        let limits = AheadLimits {
            per_kind: 8,
            total: 8,
            starting: 4,
        };
        let (pool, _) = pool(limits, Duration::ZERO);
        // The first take finds nothing and fills the kind.
        let (none, first) = pool.take("f", || (), KEEP);
        assert!(none.is_none());
        settle(&pool).await;
        assert_eq!(pool.stats().ready, 2, "one more than in use");
        // Many concurrent takers: every item handed out is handed out once.
        let mut guards = vec![first];
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        for _ in 0..50 {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.take("f", || (), KEEP) })
                })
                .collect();
            for handle in handles {
                let (item, guard) = handle.await.unwrap();
                if let Some(item) = item {
                    assert!(seen.insert(item.id), "item {} handed out twice", item.id);
                    items.push(item);
                }
                guards.push(guard);
            }
            // Spent items are dropped, as containers are removed after their call.
            items.clear();
            guards.truncate(4);
            tokio::task::yield_now().await;
        }
        assert!(seen.len() > 1);
    }

    #[tokio::test]
    async fn the_pool_stays_within_its_bounds() {
        let limits = AheadLimits {
            per_kind: 3,
            total: 5,
            starting: 2,
        };
        let (pool, counters) = pool(limits, Duration::from_millis(2));
        let mut guards = Vec::new();
        for round in 0..20 {
            for key in ["a", "b", "c"] {
                let (item, guard) = pool.take(key, || (), KEEP);
                guards.push(guard);
                drop(item);
                let stats = pool.stats();
                assert!(
                    stats.ready + stats.starting <= limits.total,
                    "{round}: {stats:?}"
                );
                let st = pool.lock();
                for (key, kind) in &st.kinds {
                    assert!(kind.ready.len() + kind.starting <= limits.per_kind, "{key}");
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        settle(&pool).await;
        let stats = pool.stats();
        assert!(stats.ready <= limits.total, "{stats:?}");
        assert_eq!(counters.live.load(Ordering::SeqCst), stats.ready);
    }

    #[tokio::test]
    async fn clear_takes_everything_and_starts_under_way_are_not_kept() {
        let (pool, counters) = pool(AheadLimits::default(), Duration::from_millis(30));
        let (_, guard) = pool.take("f", || (), KEEP);
        // Starts are under way now; clear waits for them and keeps none.
        assert!(pool.stats().starting > 0);
        let cleared = pool.clear(Duration::from_secs(5)).await;
        assert!(cleared.is_empty());
        assert_eq!(pool.stats().ready, 0);
        assert_eq!(
            counters.live.load(Ordering::SeqCst),
            0,
            "late starts dropped"
        );
        // Later calls fill it again; a second clear hands those out for removal.
        drop(guard);
        let (_, _guard) = pool.take("f", || (), KEEP);
        settle(&pool).await;
        let cleared = pool.clear(Duration::from_secs(5)).await;
        assert_eq!(cleared.len(), 2);
        drop(cleared);
        assert_eq!(counters.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn dead_items_are_never_handed_out_and_unused_kinds_expire() {
        let (pool, counters) = pool(AheadLimits::default(), Duration::ZERO);
        let (_, guard) = pool.take("f", || (), KEEP);
        settle(&pool).await;
        assert_eq!(pool.stats().ready, 2);
        counters.alive.store(false, Ordering::SeqCst);
        let (item, _g) = pool.take("f", || (), KEEP);
        assert!(item.is_none(), "dead items are dropped, not handed out");
        counters.alive.store(true, Ordering::SeqCst);
        settle(&pool).await;
        drop((guard, _g));
        // Past its keep, a kind's items go, and the kind with them.
        let (expired, empty) = pool.expire(Instant::now() + KEEP);
        assert!(!expired.is_empty());
        assert!(empty);
        drop(expired);
        assert_eq!(counters.live.load(Ordering::SeqCst), 0);
        assert_eq!(pool.stats(), AheadStats::default());
    }

    #[tokio::test]
    async fn a_failing_kind_waits_before_trying_again() {
        let (pool, counters) = pool(AheadLimits::default(), Duration::ZERO);
        counters.fail.store(true, Ordering::SeqCst);
        let (_, _g) = pool.take("f", || (), KEEP);
        settle(&pool).await;
        let tried = counters.attempts.load(Ordering::SeqCst);
        assert!(tried > 0);
        let (_, _g2) = pool.take("f", || (), KEEP);
        assert_eq!(
            pool.stats().starting,
            0,
            "no new start within the retry delay"
        );
        assert_eq!(counters.attempts.load(Ordering::SeqCst), tried);
    }
}
