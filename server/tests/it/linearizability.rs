//! Linearizability checker for key-value store histories, in the style of
//! [porcupine](https://github.com/anishathalye/porcupine): the Wing & Gong
//! search with Lowe's memoisation (as in Knossos and porcupine).
//!
//! # Model
//!
//! Every key is an independent register holding `Option<Value>` (`None` =
//! absent), initially `None`. `Put` writes, `Get` reads, and `Cas` writes `new`
//! and returns `true` iff the current value equals `expected` (`None` matches an
//! absent key), otherwise it returns `false` and changes nothing.
//!
//! # Algorithm
//!
//! 1. *P-compositionality*: linearizability is local, so the history is split
//!    by key and each sub-history is checked on its own (keys in sorted order;
//!    the first violation found is reported).
//! 2. The call and return entries of the operations are sorted by time into a
//!    doubly linked list.
//! 3. Depth-first search, walking the list from the front. At a call entry we
//!    try to linearize that operation now: if the model accepts it in the
//!    current state and the resulting configuration is not in the cache, we
//!    push it on a stack, *lift* its two entries out of the list and restart
//!    from the front. Reaching a return entry means an operation that has
//!    already returned is not linearized yet, so we backtrack: pop the last
//!    choice, *unlift* its entries and try the next candidate after it. An
//!    empty list means success; a return entry with an empty stack means that
//!    no linearization exists.
//! 4. Lowe's cache: the rest of the search only depends on the configuration
//!    (bitset of linearized ops, register state), so a configuration seen
//!    before is pruned.
//! 5. The work is bounded by a step budget per key and a global deadline;
//!    exceeding either yields [`CheckResult::Timeout`] instead of hanging.
//!
//! # Equal timestamps
//!
//! Operation A precedes B in real time iff A returned before B was called.
//! Timestamps come from a clock of finite resolution read by different
//! threads, so `a.ret == b.call` does not say which event came first. Treating
//! such operations as ordered could reject a linearizable history (a false
//! alarm); treating them as concurrent can at worst miss a violation that
//! hinges on a same-nanosecond order. Like porcupine, we sort calls before
//! returns at equal times: intervals that merely touch are *concurrent*, and
//! precedence requires `a.ret < b.call`.
//!
//! # Unknown outcomes
//!
//! An operation with [`Outcome::Unknown`] (error, timeout, crash) may or may
//! not have taken effect, at any moment after its call, even after the client
//! gave up. As in Knossos and porcupine, its return time is infinite and its
//! output unconstrained: it may be linearized anywhere after its call, and
//! "never took effect" is the same as "linearized after everything else". An
//! unknown `Put` writes; an unknown `Cas` writes iff the value equals
//! `expected` at its linearization point. An unknown `Get` can neither
//! constrain nor change anything and is dropped.
//!
//! Unknown ops have no return entry: they sit in a second list, sorted by call
//! time, and are tried after the known candidates, i.e. where the search would
//! otherwise backtrack. Once every known op is linearized the search succeeds
//! (the remaining unknown ops go at the end). Because unknown ops stay pending
//! forever, an exact cache would let every subset of them blow up the search,
//! so we prune further; each rule keeps at least one linearization of any
//! linearizable history (it rewrites linearizations into a normal form):
//!
//! - *dominance*: with K/U the linearized known/unknown ops, (K, U, s) is
//!   pruned if some (K, U', s) with U' ⊆ U was seen: unknown ops constrain
//!   nobody's real-time order, so the latter can finish like the former does;
//! - an unknown op that would leave the state unchanged is not tried;
//! - of unknown ops with identical inputs, only the earliest unused is tried;
//! - after a run of unknown ops that started in state s0, an op that is legal
//!   in s0 is not tried, unless it is an unknown `Cas`: the run could as well
//!   be moved after that op, or is overwritten by it (the cache key includes
//!   s0 for this reason).
//!
//! A test checks all this against a brute-force enumeration of small
//! histories. Valid histories are typically accepted in near-linear time;
//! proving a violation exhausts the configurations before it, which gets
//! expensive with many unknown writes over a small value domain. Unique
//! written values (e.g. from a global counter) keep the search cheap.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

/// Register values.
pub type Value = u64;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Put {
        key: String,
        value: Value,
    },
    Get {
        key: String,
    },
    Cas {
        key: String,
        expected: Option<Value>,
        new: Value,
    },
}

impl Input {
    pub fn key(&self) -> &str {
        match self {
            Input::Put { key, .. } | Input::Get { key } | Input::Cas { key, .. } => key,
        }
    }
}

/// What the store answered; the variant must match the [`Input`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Put,
    /// `None` = key absent.
    Get(Option<Value>),
    /// `true` = the swap happened.
    Cas(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Output),
    /// Error or timeout: the operation may or may not have taken effect.
    Unknown,
}

/// One completed (or abandoned) client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u32,
    /// Nanoseconds since test start, taken just before sending the request.
    pub call: u64,
    /// Nanoseconds since test start, taken just after the reply (or the
    /// error). Ignored when the outcome is [`Outcome::Unknown`].
    pub ret: u64,
    pub input: Input,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Ok,
    /// The sub-history of `key` is not linearizable.
    Violation {
        key: String,
        description: String,
    },
    /// The search for `key` exceeded its budget (no violation was found).
    Timeout {
        key: String,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct CheckOptions {
    /// Maximum number of search steps for a single key.
    pub max_steps_per_key: u64,
    /// Wall-clock limit for the whole check.
    pub timeout: Option<Duration>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 20_000_000,
            timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Checks `history` with [`CheckOptions::default`].
pub fn check(history: &[Operation]) -> CheckResult {
    check_with(history, &CheckOptions::default())
}

/// Checks `history`. A violation on any key wins over a timeout on another.
///
/// # Panics
///
/// On a malformed history (an output that does not match its input, or a
/// known outcome with `ret < call`): that is a bug in the test harness.
pub fn check_with(history: &[Operation], opts: &CheckOptions) -> CheckResult {
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if Step::of(i, op).is_some() {
            by_key.entry(op.input.key()).or_default().push(i);
        }
    }
    let mut timed_out = None;
    for (key, ids) in by_key {
        match check_key(history, &ids, opts.max_steps_per_key, deadline) {
            KeyResult::Ok => {}
            KeyResult::Timeout => {
                timed_out.get_or_insert(key);
            }
            KeyResult::Violation(description) => {
                let key = key.to_string();
                return CheckResult::Violation { key, description };
            }
        }
    }
    match timed_out {
        Some(key) => CheckResult::Timeout {
            key: key.to_string(),
        },
        None => CheckResult::Ok,
    }
}

type State = Option<Value>;

/// An operation compiled for the model; `succeeded: None` = unknown outcome.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Put(Value),
    Get(Option<Value>),
    Cas {
        expected: Option<Value>,
        new: Value,
        succeeded: Option<bool>,
    },
}

impl Step {
    /// `None` for operations without effect or constraint (unknown gets).
    fn of(index: usize, op: &Operation) -> Option<Step> {
        let out = match op.outcome {
            Outcome::Unknown => None,
            Outcome::Ok(out) => {
                assert!(op.ret >= op.call, "history[{index}] returns before call");
                Some(out)
            }
        };
        match (&op.input, out) {
            (Input::Get { .. }, None) => None,
            (Input::Get { .. }, Some(Output::Get(v))) => Some(Step::Get(v)),
            (Input::Put { value, .. }, None | Some(Output::Put)) => Some(Step::Put(*value)),
            (Input::Cas { expected, new, .. }, None) => Some(Step::Cas {
                expected: *expected,
                new: *new,
                succeeded: None,
            }),
            (Input::Cas { expected, new, .. }, Some(Output::Cas(ok))) => Some(Step::Cas {
                expected: *expected,
                new: *new,
                succeeded: Some(ok),
            }),
            _ => panic!("history[{index}]: output does not match input: {op:?}"),
        }
    }

    /// The state after applying `self` to `state`, or `None` if illegal.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put(v) => Some(Some(v)),
            Step::Get(v) => (v == state).then_some(state),
            Step::Cas {
                expected,
                new,
                succeeded,
            } => {
                let hit = state == expected;
                if succeeded.is_some_and(|ok| ok != hit) {
                    return None;
                }
                Some(if hit { Some(new) } else { state })
            }
        }
    }
}

enum KeyResult {
    Ok,
    Violation(String),
    Timeout,
}

const NIL: usize = usize::MAX;
/// Sentinel heads: the list of call/return entries of known-outcome ops, and
/// the list of call entries of unknown-outcome ops (sorted by call time).
const KNOWN: usize = 0;
const UNKNOWN: usize = 1;

struct Node {
    op: usize,
    time: u64,
    is_call: bool,
    /// For the call entry of a known op: the node of its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

struct Lists {
    nodes: Vec<Node>,
}

impl Lists {
    fn append(&mut self, tail: &mut usize, op: usize, time: u64, is_call: bool) -> usize {
        let me = self.nodes.len();
        let (matching, prev, next) = (NIL, *tail, NIL);
        self.nodes.push(Node {
            op,
            time,
            is_call,
            matching,
            prev,
            next,
        });
        self.nodes[*tail].next = me;
        *tail = me;
        me
    }

    fn unlink(&mut self, n: usize) {
        let (prev, next) = (self.nodes[n].prev, self.nodes[n].next);
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let (prev, next) = (self.nodes[n].prev, self.nodes[n].next);
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if self.nodes[call].matching != NIL {
            self.unlink(self.nodes[call].matching);
        }
    }

    /// Exact inverse of [`Lists::lift`] (dancing links: undo in reverse order).
    fn unlift(&mut self, call: usize) {
        if self.nodes[call].matching != NIL {
            self.relink(self.nodes[call].matching);
        }
        self.relink(call);
    }
}

/// Explored configurations, keyed by (known ops linearized, state, state at
/// the start of the current unknown run), each with the antichain of minimal
/// sets of linearized unknown ops seen (see "dominance" in the module docs).
/// Without unknown ops this is exactly porcupine's cache.
#[derive(Default)]
struct Cache {
    seen: HashMap<Vec<u64>, Vec<Vec<u64>>>,
    key: Vec<u64>,
}

impl Cache {
    /// Records a configuration; `false` if it is dominated by one seen before.
    fn insert(&mut self, known: &[u64], state: State, run: Option<State>, unknown: &[u64]) -> bool {
        let code = |s: State| s.map_or([0, 0], |v| [1, v]);
        self.key.clear();
        self.key.extend_from_slice(known);
        self.key.extend(code(state));
        self.key.extend(run.map_or([2, 0], code));
        let subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(x, y)| x & !y == 0);
        let Some(seen) = self.seen.get_mut(&self.key[..]) else {
            self.seen.insert(self.key.clone(), vec![unknown.to_vec()]);
            return true;
        };
        if seen.iter().any(|u| subset(u, unknown)) {
            return false;
        }
        seen.retain(|u| !subset(unknown, u));
        seen.push(unknown.to_vec());
        true
    }
}

fn flip(bits: &mut [u64], i: usize) {
    bits[i / 64] ^= 1 << (i % 64);
}

fn is_set(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & 1 << (i % 64) != 0
}

/// Where the search is: at an entry of the known list, or (once the first
/// return entry, at time `horizon`, is reached) at an unknown op's call.
#[derive(Clone, Copy)]
enum Cursor {
    Known(usize),
    Unknown(usize, u64),
}

/// A choice on the DFS stack, with what to restore when undoing it.
struct Frame {
    node: usize,
    state: State,
    run: Option<State>,
    horizon: u64,
}

/// The deepest point where the search got stuck, for the error message.
struct Stuck {
    depth: usize,
    prefix_tail: Vec<usize>,
    state: State,
    stuck_op: usize,
    pending: Vec<usize>,
}

const SHOWN: usize = 8;

/// Checks the sub-history `ids` (indices into `history`) of one key.
fn check_key(
    history: &[Operation],
    ids: &[usize],
    max_steps: u64,
    deadline: Option<Instant>,
) -> KeyResult {
    let steps: Vec<Step> = ids
        .iter()
        .map(|&i| Step::of(i, &history[i]).expect("filtered"))
        .collect();
    let is_unknown: Vec<bool> = ids
        .iter()
        .map(|&i| history[i].outcome == Outcome::Unknown)
        .collect();
    // Known ops: calls before returns at equal times (see module docs).
    let mut known_events = Vec::new();
    let mut unknown_calls = Vec::new();
    let mut slot = vec![0; ids.len()]; // index in the known or unknown bitset
    for (j, &i) in ids.iter().enumerate() {
        if is_unknown[j] {
            slot[j] = unknown_calls.len();
            unknown_calls.push((history[i].call, j));
        } else {
            slot[j] = known_events.len() / 2;
            known_events.push((history[i].call, false, j));
            known_events.push((history[i].ret, true, j));
        }
    }
    known_events.sort_unstable();
    unknown_calls.sort_unstable();

    let sentinel = || Node {
        op: NIL,
        time: 0,
        is_call: false,
        matching: NIL,
        prev: NIL,
        next: NIL,
    };
    let mut lists = Lists {
        nodes: vec![sentinel(), sentinel()],
    };
    let (mut tail, mut call_node) = (KNOWN, vec![NIL; ids.len()]);
    for &(time, is_return, j) in &known_events {
        let me = lists.append(&mut tail, j, time, !is_return);
        match is_return {
            false => call_node[j] = me,
            true => lists.nodes[call_node[j]].matching = me,
        }
    }
    // Unknown ops with equal effects are interchangeable once called, so only
    // the earliest unlinearized one of such twins is ever tried.
    let (mut twin, mut last) = (vec![NIL; ids.len()], HashMap::new());
    let mut tail = UNKNOWN;
    for &(time, j) in &unknown_calls {
        lists.append(&mut tail, j, time, true);
        twin[j] = last.insert(steps[j], j).unwrap_or(NIL);
    }

    let mut known = vec![0u64; (known_events.len() / 2).div_ceil(64)];
    let mut unknown = vec![0u64; unknown_calls.len().div_ceil(64)];
    let toggle = |j: usize, k: &mut [u64], u: &mut [u64]| match is_unknown[j] {
        true => flip(u, slot[j]),
        false => flip(k, slot[j]),
    };
    let mut cache = Cache::default();
    let mut state: State = None;
    let mut run: Option<State> = None; // state before the current run of unknown ops
    cache.insert(&known, state, run, &unknown);
    let mut stack: Vec<Frame> = Vec::new();
    let mut best: Option<Stuck> = None;
    let mut cursor = Cursor::Known(lists.nodes[KNOWN].next);
    let mut count = 0u64;
    loop {
        count += 1;
        if count > max_steps
            || (count.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() > d))
        {
            return KeyResult::Timeout;
        }
        let (entry, horizon) = match cursor {
            Cursor::Known(NIL) => return KeyResult::Ok, // every known op is linearized
            Cursor::Known(e) if !lists.nodes[e].is_call => {
                cursor = Cursor::Unknown(lists.nodes[UNKNOWN].next, lists.nodes[e].time);
                continue;
            }
            Cursor::Known(e) => (e, 0),
            Cursor::Unknown(e, h) if e != NIL && lists.nodes[e].time <= h => (e, h),
            Cursor::Unknown(..) => {
                // A known op has returned unlinearized: record, then backtrack.
                if best.as_ref().is_none_or(|b| stack.len() > b.depth) {
                    best = Some(stuck_here(&lists, ids, &stack, state, cursor));
                }
                let Some(frame) = stack.pop() else {
                    let best = best.expect("recorded");
                    return KeyResult::Violation(describe(history, ids.len(), &best));
                };
                let j = lists.nodes[frame.node].op;
                toggle(j, &mut known, &mut unknown);
                (state, run) = (frame.state, frame.run);
                lists.unlift(frame.node);
                let next = lists.nodes[frame.node].next;
                cursor = match is_unknown[j] {
                    true => Cursor::Unknown(next, frame.horizon),
                    false => Cursor::Known(next),
                };
                continue;
            }
        };
        let j = lists.nodes[entry].op;
        // Normal form (see module docs): skip an unknown op whose earlier twin
        // is unused, an unknown op that changes nothing and, during a run of
        // unknown ops that started in state s0, any op except an unknown CAS
        // that is legal in s0 (the run could be dropped or moved after it).
        let skip = match run {
            _ if is_unknown[j] && twin[j] != NIL && !is_set(&unknown, slot[twin[j]]) => true,
            Some(s0) if !is_unknown[j] || matches!(steps[j], Step::Put(_)) => {
                steps[j].apply(s0).is_some()
            }
            _ => false,
        };
        let changes = |&s: &State| !is_unknown[j] || s != state;
        if let Some(new_state) = steps[j].apply(state).filter(changes).filter(|_| !skip) {
            toggle(j, &mut known, &mut unknown);
            let new_run = is_unknown[j].then_some(run.unwrap_or(state));
            if cache.insert(&known, new_state, new_run, &unknown) {
                let (node, horizon) = (entry, horizon);
                stack.push(Frame {
                    node,
                    state,
                    run,
                    horizon,
                });
                (state, run) = (new_state, new_run);
                lists.lift(entry);
                cursor = Cursor::Known(lists.nodes[KNOWN].next);
                continue;
            }
            toggle(j, &mut known, &mut unknown);
        }
        let next = lists.nodes[entry].next;
        cursor = match cursor {
            Cursor::Known(_) => Cursor::Known(next),
            Cursor::Unknown(_, h) => Cursor::Unknown(next, h),
        };
    }
}

fn stuck_here(
    lists: &Lists,
    ids: &[usize],
    stack: &[Frame],
    state: State,
    cursor: Cursor,
) -> Stuck {
    let Cursor::Unknown(_, horizon) = cursor else {
        unreachable!("stuck only after the unknown candidates")
    };
    let mut pending = Vec::new();
    let mut e = lists.nodes[KNOWN].next;
    while lists.nodes[e].is_call {
        pending.push(ids[lists.nodes[e].op]);
        e = lists.nodes[e].next;
    }
    let stuck_op = ids[lists.nodes[e].op];
    let mut u = lists.nodes[UNKNOWN].next;
    while u != NIL && lists.nodes[u].time <= horizon {
        pending.push(ids[lists.nodes[u].op]);
        u = lists.nodes[u].next;
    }
    pending.truncate(SHOWN);
    let tail = &stack[stack.len().saturating_sub(SHOWN)..];
    Stuck {
        depth: stack.len(),
        prefix_tail: tail.iter().map(|f| ids[lists.nodes[f.node].op]).collect(),
        state,
        stuck_op,
        pending,
    }
}

fn describe(history: &[Operation], n: usize, s: &Stuck) -> String {
    let line = |i: usize| format!("\n    #{i} {}", history[i]);
    let mut d = format!(
        "no linearization of the {n} ops on this key; longest linearizable prefix: {} ops",
        s.depth
    );
    if s.depth > 0 {
        d += ", ending with:";
        s.prefix_tail.iter().for_each(|&i| d += &line(i));
    }
    d += &format!("\nregister after that prefix: {:?}", s.state);
    d += &format!(
        "\nthen #{} {} has returned, but none of the pending ops extends the prefix:",
        s.stuck_op, history[s.stuck_op]
    );
    s.pending.iter().for_each(|&i| d += &line(i));
    d
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} ", self.client)?;
        match &self.input {
            Input::Put { key, value } => write!(f, "put({key}, {value})")?,
            Input::Get { key } => write!(f, "get({key})")?,
            Input::Cas { key, expected, new } => write!(f, "cas({key}, {expected:?} -> {new})")?,
        }
        let (call, ret) = (self.call, self.ret);
        match self.outcome {
            Outcome::Ok(Output::Put) => write!(f, " -> ok [{call}, {ret}]"),
            Outcome::Ok(Output::Get(v)) => write!(f, " -> {v:?} [{call}, {ret}]"),
            Outcome::Ok(Output::Cas(ok)) => write!(f, " -> {ok} [{call}, {ret}]"),
            Outcome::Unknown => write!(f, " -> unknown [{call}, inf)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, call: u64, ret: u64, input: Input, out: Output) -> Operation {
        let outcome = Outcome::Ok(out);
        Operation {
            client,
            call,
            ret,
            input,
            outcome,
        }
    }
    fn put(c: u32, call: u64, ret: u64, key: &str, value: Value) -> Operation {
        let key = key.to_string();
        op(c, call, ret, Input::Put { key, value }, Output::Put)
    }
    fn get(c: u32, call: u64, ret: u64, key: &str, v: Option<Value>) -> Operation {
        let key = key.to_string();
        op(c, call, ret, Input::Get { key }, Output::Get(v))
    }
    fn cas(
        c: u32,
        call: u64,
        ret: u64,
        key: &str,
        exp: Option<Value>,
        new: Value,
        ok: bool,
    ) -> Operation {
        let key = key.to_string();
        let input = Input::Cas {
            key,
            expected: exp,
            new,
        };
        op(c, call, ret, input, Output::Cas(ok))
    }
    fn unknown(mut op: Operation) -> Operation {
        op.outcome = Outcome::Unknown;
        op
    }
    fn assert_violation(history: &[Operation], key: &str) -> String {
        match check(history) {
            CheckResult::Violation {
                key: k,
                description,
            } => {
                assert_eq!(k, key);
                description
            }
            other => panic!("expected a violation on {key}, got {other:?}"),
        }
    }

    #[test]
    fn sequential_valid() {
        assert_eq!(check(&[]), CheckResult::Ok);
        let h = [
            get(0, 0, 1, "a", None),
            put(0, 2, 3, "a", 1),
            get(1, 4, 5, "a", Some(1)),
            cas(0, 6, 7, "a", Some(1), 2, true),
            cas(1, 8, 9, "a", Some(1), 3, false),
            cas(1, 10, 11, "b", None, 7, true),
            get(0, 12, 13, "a", Some(2)),
            get(0, 14, 15, "b", Some(7)),
        ];
        assert_eq!(check(&h), CheckResult::Ok);
    }

    #[test]
    fn concurrent_valid() {
        let h = [
            put(0, 0, 100, "a", 1),
            get(1, 10, 20, "a", None),
            get(2, 30, 40, "a", Some(1)),
            put(1, 50, 70, "a", 2),
            get(2, 55, 65, "a", Some(2)),
            // Only valid if the later-called put(3) linearizes before put(4).
            put(3, 110, 200, "a", 4),
            put(4, 120, 130, "a", 3),
            get(4, 140, 150, "a", Some(3)),
            get(4, 210, 220, "a", Some(4)),
            cas(0, 230, 260, "a", Some(4), 5, true),
            cas(1, 240, 250, "a", Some(4), 6, false),
        ];
        assert_eq!(check(&h), CheckResult::Ok);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        let h = [put(0, 0, 10, "a", 1), get(1, 10, 20, "a", None)];
        assert_eq!(check(&h), CheckResult::Ok);
        let h = [put(0, 0, 10, "a", 1), get(1, 11, 20, "a", None)];
        assert_violation(&h, "a");
    }

    #[test]
    fn anomalies_are_flagged() {
        // Stale read.
        let stale = [
            put(0, 0, 10, "a", 1),
            put(0, 20, 30, "a", 2),
            get(1, 40, 50, "a", Some(1)),
        ];
        let d = assert_violation(&stale, "a");
        assert!(d.contains("#2 c1 get(a) -> Some(1) [40, 50]"), "{d}");
        assert!(d.contains("register after that prefix: Some(2)"), "{d}");
        // CAS succeeding on an overwritten value.
        let lost = [
            put(0, 0, 10, "k", 1),
            put(1, 20, 30, "k", 2),
            cas(0, 40, 50, "k", Some(1), 3, true),
        ];
        assert_violation(&lost, "k");
        // Two concurrent create-if-absent both succeeding (one write is lost).
        let double = [
            cas(0, 0, 10, "k", None, 1, true),
            cas(1, 5, 15, "k", None, 2, true),
        ];
        assert_violation(&double, "k");
        // A read of a value never written, on one key of several.
        let phantom = [
            put(0, 0, 10, "a", 1),
            put(0, 0, 10, "b", 1),
            get(1, 5, 15, "b", Some(42)),
            get(1, 20, 30, "a", Some(1)),
        ];
        assert_violation(&phantom, "b");
    }

    #[test]
    fn unknown_outcomes() {
        // Unknown write observed later, even long after the client gave up.
        let h = [
            put(0, 0, 10, "a", 1),
            unknown(put(1, 20, 30, "a", 2)),
            get(2, 40, 50, "a", Some(1)),
            get(2, 60, 70, "a", Some(2)),
        ];
        assert_eq!(check(&h), CheckResult::Ok);
        // Unknown writes never observed, and an unknown get with a bogus value.
        let h = [
            put(0, 0, 10, "a", 1),
            unknown(put(1, 20, 30, "a", 2)),
            unknown(cas(1, 40, 50, "a", Some(1), 3, true)),
            unknown(get(1, 60, 70, "a", Some(99))),
            get(2, 80, 90, "a", Some(1)),
        ];
        assert_eq!(check(&h), CheckResult::Ok);
        // Unknown CAS observed.
        let h = [
            unknown(cas(1, 0, 5, "a", None, 3, false)),
            get(2, 80, 90, "a", Some(3)),
        ];
        assert_eq!(check(&h), CheckResult::Ok);
        // But an unknown write takes effect at most once, and only after its call...
        let h = [
            put(0, 0, 10, "a", 1),
            unknown(put(1, 20, 30, "a", 2)),
            get(2, 40, 50, "a", Some(2)),
            get(2, 60, 70, "a", Some(1)),
        ];
        assert_violation(&h, "a");
        let h = [get(2, 0, 10, "a", Some(2)), unknown(put(1, 20, 30, "a", 2))];
        assert_violation(&h, "a");
        // ...and an unknown CAS whose expectation never held cannot write.
        let h = [
            put(0, 0, 10, "a", 1),
            unknown(cas(1, 20, 30, "a", Some(7), 5, true)),
            get(2, 40, 50, "a", Some(5)),
        ];
        assert_violation(&h, "a");
    }

    #[test]
    #[should_panic(expected = "output does not match input")]
    fn malformed_history_panics() {
        let mut bad = put(0, 0, 1, "a", 1);
        bad.outcome = Outcome::Ok(Output::Cas(true));
        check(&[bad]);
    }

    #[test]
    fn step_budget_gives_timeout() {
        let mut h: Vec<Operation> = (0..12).map(|i| put(i, 0, 100, "a", i.into())).collect();
        h.push(get(0, 200, 300, "a", Some(1000)));
        let opts = CheckOptions {
            max_steps_per_key: 50,
            timeout: None,
        };
        let r = check_with(&h, &opts);
        assert_eq!(r, CheckResult::Timeout { key: "a".into() });
        assert_violation(&h, "a");
    }

    #[test]
    fn many_unknown_writes_stay_tractable() {
        // 40 timed-out writes, each observed later in order: fine.
        let mut h: Vec<_> = (0..40)
            .map(|i| unknown(put(i, i.into(), 0, "a", i.into())))
            .collect();
        h.extend((0..40).map(|i| get(99, 100 + 2 * i, 101 + 2 * i, "a", Some(i))));
        let opts = CheckOptions {
            max_steps_per_key: 1_000_000,
            timeout: None,
        };
        assert_eq!(check_with(&h, &opts), CheckResult::Ok);
        // Proving a violation at the end explores every subset of the unknown
        // writes unless dominated configurations are pruned.
        h.push(get(99, 1000, 1001, "a", Some(999)));
        assert!(matches!(
            check_with(&h, &opts),
            CheckResult::Violation { .. }
        ));
    }

    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Simulates a linearizable store: each op takes effect at a random point
    /// of its interval; 3% of the replies are lost (half of those ops took
    /// effect). Writes use `counter % vals`; CASes expect the last value the
    /// client saw.
    fn simulate(
        seed: u64,
        clients: u32,
        keys: u64,
        per_client: usize,
        vals: u64,
    ) -> Vec<Operation> {
        let mut rng = XorShift(seed);
        let mut slots = Vec::new(); // (linearization point, client, call, ret)
        for client in 0..clients {
            let mut t = rng.below(20);
            for _ in 0..per_client {
                let call = t + rng.below(30);
                let ret = call + 1 + rng.below(100);
                slots.push((call + rng.below(ret - call + 1), client, call, ret));
                t = ret + 1;
            }
        }
        slots.sort_unstable();
        let mut store: HashMap<String, Value> = HashMap::new();
        let mut seen: HashMap<(u32, String), Value> = HashMap::new();
        let mut history = Vec::new();
        for (counter, (_, client, call, ret)) in (0u64..).zip(slots) {
            let key = format!("k{}", rng.below(keys));
            let cur = store.get(&key).copied();
            let last = seen.get(&(client, key.clone())).copied();
            let new = counter % vals;
            let (input, output, after) = match rng.below(10) {
                0..=3 => (Input::Get { key: key.clone() }, Output::Get(cur), cur),
                4..=6 => (
                    Input::Put {
                        key: key.clone(),
                        value: new,
                    },
                    Output::Put,
                    Some(new),
                ),
                _ => {
                    let expected = last.filter(|_| rng.below(4) > 0);
                    let ok = cur == expected;
                    let input = Input::Cas {
                        key: key.clone(),
                        expected,
                        new,
                    };
                    (input, Output::Cas(ok), if ok { Some(new) } else { cur })
                }
            };
            let lost = rng.below(100) < 3;
            if !lost || rng.below(2) == 0 {
                after.map(|v| store.insert(key.clone(), v));
            }
            if !lost {
                after.map(|v| seen.insert((client, key), v));
            }
            let outcome = if lost {
                Outcome::Unknown
            } else {
                Outcome::Ok(output)
            };
            history.push(Operation {
                client,
                call,
                ret,
                input,
                outcome,
            });
        }
        history
    }

    fn is_read(o: &Operation) -> bool {
        matches!(o.outcome, Outcome::Ok(Output::Get(Some(_))))
    }

    #[test]
    fn randomized_large_history() {
        let opts = CheckOptions {
            max_steps_per_key: 10_000,
            timeout: None,
        };
        let h = simulate(0x9e37_79b9_7f4a_7c15, 5, 3, 600, u64::MAX);
        let start = Instant::now();
        assert_eq!(check_with(&h, &opts), CheckResult::Ok);
        eprintln!("accepted {} ops in {:?}", h.len(), start.elapsed());
        let reads: Vec<usize> = (0..h.len()).filter(|&i| is_read(&h[i])).collect();
        let flag = |bad: &[Operation], i: usize| {
            let start = Instant::now();
            let r = check(bad);
            eprintln!("flagged in {:?}", start.elapsed());
            assert!(matches!(r, CheckResult::Violation { key, .. } if key == bad[i].input.key()));
        };

        // A read of a value never written.
        let (mut bad, i) = (h.clone(), reads[reads.len() / 2]);
        bad[i].outcome = Outcome::Ok(Output::Get(Some(u64::MAX)));
        flag(&bad, i);

        // The last read sees an absent key although a put completed before it.
        let (mut bad, i) = (h.clone(), *reads.last().unwrap());
        let key = h[i].input.key();
        assert!(h.iter().any(|o| o.ret < h[i].call
            && o.outcome == Outcome::Ok(Output::Put)
            && o.input.key() == key));
        bad[i].outcome = Outcome::Ok(Output::Get(None));
        flag(&bad, i);

        // A stale read: r sees the value of put w although the (acknowledged)
        // writer of r's value was called after w returned and returned before r
        // was called. Values are unique, so that is a violation.
        let writer = |v: Value| {
            h.iter().position(|o| match o.input {
                Input::Put { value, .. } | Input::Cas { new: value, .. } => value == v,
                Input::Get { .. } => false,
            })
        };
        let stale = reads.iter().rev().find_map(|&r| {
            let Outcome::Ok(Output::Get(Some(v))) = h[r].outcome else {
                unreachable!()
            };
            let wv = writer(v).filter(|&w| h[w].outcome != Outcome::Unknown)?;
            let w = h.iter().position(|o| {
                o.outcome == Outcome::Ok(Output::Put)
                    && o.input.key() == h[r].input.key()
                    && o.ret < h[wv].call
            })?;
            (h[wv].ret < h[r].call).then_some((r, w))
        });
        let (r, w) = stale.expect("some read has a stale candidate");
        let Input::Put { value, .. } = h[w].input else {
            unreachable!()
        };
        let mut bad = h.clone();
        bad[r].outcome = Outcome::Ok(Output::Get(Some(value)));
        flag(&bad, r);
    }

    #[test]
    fn randomized_small_value_domain() {
        // Three values only: many ambiguous explanations, including for the
        // unknown-outcome ops.
        for seed in 1..30u64 {
            let h = simulate(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), 4, 1, 60, 3);
            assert_eq!(check(&h), CheckResult::Ok, "seed {seed}");
            let mut bad = h.clone();
            let i = (0..h.len()).rev().find(|&i| is_read(&h[i])).unwrap();
            bad[i].outcome = Outcome::Ok(Output::Get(Some(7)));
            assert!(
                matches!(check(&bad), CheckResult::Violation { .. }),
                "seed {seed}"
            );
        }
    }

    /// Reference semantics by brute force over all orders of a tiny history.
    fn brute_force(h: &[Operation], state: State, left: &[usize]) -> bool {
        if left.iter().all(|&i| h[i].outcome == Outcome::Unknown) {
            return true; // the rest may take effect after everything else
        }
        left.iter().enumerate().any(|(k, &i)| {
            let blocked = left
                .iter()
                .any(|&j| h[j].outcome != Outcome::Unknown && h[j].ret < h[i].call);
            let next = Step::of(i, &h[i]).map_or(Some(state), |s| s.apply(state));
            let mut rest = left.to_vec();
            rest.remove(k);
            !blocked && next.is_some_and(|s| brute_force(h, s, &rest))
        })
    }

    #[test]
    fn agrees_with_brute_force() {
        let mut rng = XorShift(42);
        let mut violations = 0;
        for _ in 0..4000 {
            let n = 1 + rng.below(7) as usize;
            let h: Vec<Operation> = (0..n)
                .map(|i| {
                    let call = rng.below(10);
                    let ret = call + rng.below(6);
                    let v = rng.below(3);
                    let mut o = match rng.below(3) {
                        0 => put(i as u32, call, ret, "a", v),
                        1 => get(i as u32, call, ret, "a", Some(v).filter(|&v| v > 0)),
                        _ => cas(
                            i as u32,
                            call,
                            ret,
                            "a",
                            Some(v).filter(|&v| v > 0),
                            rng.below(3),
                            rng.below(2) == 0,
                        ),
                    };
                    if rng.below(3) == 0 {
                        o = unknown(o);
                    }
                    o
                })
                .collect();
            let expected = brute_force(&h, None, &(0..n).collect::<Vec<_>>());
            let got = check(&h);
            assert_eq!(got == CheckResult::Ok, expected, "{h:#?}\n{got:?}");
            violations += usize::from(!expected);
        }
        assert!(violations > 300, "{violations}");
    }
}
