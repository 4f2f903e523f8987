//! Fuzz harness for the wire conversions: what a peer sends, decoded by prost and converted to
//! the protocol's domain types, must convert or give a typed [`WireError`], never panic, and
//! what converts must be within the documented limits.
//!
//! Three sources of input:
//! - the corpus (`tests/fuzz/corpus/wire/`, encoded messages), each file decoded as a `Task`,
//!   a `SiteReply` and a `JoinRequest`;
//! - byte-level mutations of valid encoded messages (and of the corpus), and raw bytes;
//! - structured: a valid message from a generator with one field broken (a bad job id, a
//!   non-finite value, a wrong length, an inconsistent secure aggregation setup ...). Where
//!   the mutation makes the message malformed by the wire rules, the conversion must refuse it.
//!
//! Case counts: `FEDCARE_FUZZ_CASES` (see `tests/fuzz/README.md`).

#[path = "../../../tests/fuzz/support.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;

use fedcare_proto::v1 as pb;
use fedcare_protocol::messages::{ReplyKind, TaskKind};
use fedcare_wire::{
    MAX_MODEL_VALUES, MAX_SECAGG_ITEMS, WireError, reply_from_wire, reply_round, reply_to_wire, site_id, task_from_wire, task_round,
    task_to_wire,
};
use prost::Message;
use proptest::prelude::*;
use proptest::sample::Index;

fn fuzz_root() -> PathBuf {
    support::fuzz_root_from_crate(env!("CARGO_MANIFEST_DIR"))
}

// ----- the properties -----

fn is_job_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_site_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Converts a task and, if it converted, checks everything the domain type promises and that
/// it survives a round trip unchanged.
fn check_task(t: pb::Task) -> Result<(), WireError> {
    let wire_round = task_round(&t);
    let task = task_from_wire(t)?;
    assert!(is_job_id(task.job.as_str()), "accepted job id {:?}", task.job.as_str());
    let round = match &task.kind {
        TaskKind::Offer { .. } | TaskKind::Stats | TaskKind::End { .. } => None,
        TaskKind::Train { round, model, standardization, secagg } => {
            check_model(&model.values, standardization);
            if let Some(sa) = secagg {
                sa.setup.validate().expect("an accepted setup is internally consistent");
                assert!(sa.setup.sites.len() <= MAX_SECAGG_ITEMS);
                assert!(sa.setup.params.dim <= 2 * MAX_MODEL_VALUES + 2);
                assert_eq!(sa.setup.round_id.len(), 32);
            }
            Some(*round)
        }
        TaskKind::Eval { round, model, standardization } => {
            check_model(&model.values, standardization);
            Some(*round)
        }
        TaskKind::ShareKeys { round, keys } => {
            assert!(keys.len() <= MAX_SECAGG_ITEMS);
            Some(*round)
        }
        TaskKind::Mask { round, shares } => {
            assert!(shares.len() <= MAX_SECAGG_ITEMS);
            Some(*round)
        }
        TaskKind::Unmask { round, .. } => Some(*round),
    };
    assert_eq!(round, wire_round, "task_round disagrees with the converted task");
    let again = task_from_wire(task_to_wire(&task)).expect("a converted task converts again");
    assert_eq!(again, task, "a converted task does not survive a round trip");
    Ok(())
}

fn check_model(values: &Arc<Vec<f32>>, std: &fedcare_data::Standardization) {
    assert!(values.len() <= MAX_MODEL_VALUES, "model of {} values accepted", values.len());
    assert!(values.iter().all(|v| v.is_finite()), "non-finite model value accepted");
    assert_eq!(std.mean.len(), std.std.len(), "standardisation lengths differ");
    assert!(std.mean.iter().all(|m| m.is_finite()), "non-finite mean accepted");
    assert!(std.std.iter().all(|s| s.is_finite() && *s > 0.0), "non-positive or non-finite deviation accepted");
}

/// Converts a reply and, if it converted, checks what the domain type promises and that it
/// survives a round trip (compared as encoded bytes, so a NaN in an update compares equal).
fn check_reply(r: pb::SiteReply) -> Result<(), WireError> {
    let wire_round = reply_round(&r);
    let reply = reply_from_wire(r)?;
    assert!(is_site_id(reply.site.as_str()), "accepted site id {:?}", reply.site.as_str());
    assert!(is_job_id(reply.job.as_str()), "accepted job id {:?}", reply.job.as_str());
    let round = match &reply.kind {
        ReplyKind::Decision { .. } | ReplyKind::Stats(_) | ReplyKind::Failed { .. } => None,
        ReplyKind::Update(u) => {
            assert!(u.delta.len() <= MAX_MODEL_VALUES, "update of {} values accepted", u.delta.len());
            Some(u.round)
        }
        ReplyKind::Evaluation(e) => Some(e.round),
        ReplyKind::Keys { round, .. } | ReplyKind::Masked { round, .. } | ReplyKind::Unmasked { round, .. } => Some(*round),
        ReplyKind::Shares { round, shares } => {
            assert!(shares.len() <= MAX_SECAGG_ITEMS);
            Some(*round)
        }
    };
    assert_eq!(round, wire_round, "reply_round disagrees with the converted reply");
    let wire = reply_to_wire(&reply);
    let again = reply_from_wire(wire.clone()).expect("a converted reply converts again");
    assert_eq!(reply_to_wire(&again).encode_to_vec(), wire.encode_to_vec(), "a converted reply does not survive a round trip");
    Ok(())
}

/// The wire part of a join: the site's name (the coordinator checks the version and key length
/// itself, in `fedcare-server`).
fn check_join(j: pb::JoinRequest) -> Result<(), WireError> {
    let site = site_id(&j.site_id, "site_id")?;
    assert!(is_site_id(site.as_str()), "accepted site id {:?}", site.as_str());
    assert_eq!(site.as_str(), j.site_id);
    Ok(())
}

/// Whatever the bytes, each decoding that succeeds converts or is refused with a typed error.
fn check_bytes(bytes: &[u8]) {
    if let Ok(t) = pb::Task::decode(bytes) {
        let _ = check_task(t);
    }
    if let Ok(r) = pb::SiteReply::decode(bytes) {
        let _ = check_reply(r);
    }
    if let Ok(j) = pb::JoinRequest::decode(bytes) {
        let _ = check_join(j);
    }
}

// ----- valid messages -----

fn job_id() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
}

fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![-1e3f32..1e3, Just(0.0), Just(-0.0), Just(f32::MAX), Just(f32::MIN), Just(f32::MIN_POSITIVE), Just(1e-45)]
}

fn model() -> impl Strategy<Value = pb::Model> {
    ("[0-9a-f]{0,64}", prop::collection::vec(finite_f32(), 0..40)).prop_map(|(layout_digest, values)| pb::Model { layout_digest, values, values_sha256: vec![] })
}

fn standardization() -> impl Strategy<Value = pb::Standardization> {
    prop::collection::vec((-1e6f64..1e6, 1e-6f64..1e6), 0..20)
        .prop_map(|v| pb::Standardization { mean: v.iter().map(|p| p.0).collect(), std: v.iter().map(|p| p.1).collect() })
}

/// A setup that `RoundSetup::validate` accepts: 2 to 6 sites in key order, complete or
/// regular graph, a threshold above half the degree.
fn valid_setup() -> impl Strategy<Value = pb::SecAggSetup> {
    (2usize..7, any::<[u8; 32]>(), 1u32..=64, 1u64..200, any::<u64>(), any::<bool>(), any::<Index>(), any::<Index>())
        .prop_flat_map(|(n, round_id, bits, dim, total, regular, k_pick, t_pick)| {
            let keys = prop::collection::btree_set(any::<[u8; 32]>(), n..=n);
            let names = prop::collection::vec("[a-z0-9]{1,8}", n..=n);
            (keys, names).prop_map(move |(keys, names)| {
                let sites: Vec<pb::SecAggSite> = keys
                    .into_iter()
                    .zip(names)
                    .enumerate()
                    .map(|(i, (key, name))| pb::SecAggSite { index: i as u32, site_id: name, identity_public_key: key.to_vec() })
                    .collect();
                // A regular graph needs an even k with 2 <= k <= n - 2.
                let (graph_k, graph_seed, degree) = if regular && n >= 4 {
                    let ks: Vec<usize> = (2..=n - 2).filter(|k| k % 2 == 0).collect();
                    let k = *k_pick.get(&ks);
                    (k as u32, fedcare_secagg::graph_seed(&round_id).to_vec(), k)
                } else {
                    (0, Vec::new(), n - 1)
                };
                let thresholds: Vec<usize> = (degree / 2 + 1..=degree).collect();
                let threshold = *t_pick.get(&thresholds) as u32;
                pb::SecAggSetup { round_id: round_id.to_vec(), sites, bits, dim, threshold, graph_k, graph_seed, total_examples: total }
            })
        })
}

fn items(max: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..max)
}

fn task_kind() -> impl Strategy<Value = pb::task::Kind> {
    use pb::task::Kind;
    prop_oneof![
        "[ -~\n]{0,200}".prop_map(|spec_toml| Kind::Offer(pb::JobOffer { spec_toml })),
        Just(Kind::Stats(pb::StatsTask {})),
        (any::<u32>(), model(), standardization(), prop::option::of(valid_setup()))
            .prop_map(|(round, m, s, secagg)| Kind::Train(pb::TrainTask { round, model: Some(m), standardization: Some(s), secagg })),
        (any::<u32>(), model(), standardization())
            .prop_map(|(round, m, s)| Kind::Eval(pb::EvalTask { round, model: Some(m), standardization: Some(s) })),
        (any::<bool>(), "[ -~]{0,40}").prop_map(|(success, reason)| Kind::End(pb::JobEnd { success, reason })),
        (any::<u32>(), items(8)).prop_map(|(round, keys)| Kind::ShareKeys(pb::SecAggShareKeysTask { round, keys })),
        (any::<u32>(), items(8)).prop_map(|(round, shares)| Kind::Mask(pb::SecAggMaskTask { round, shares })),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(round, request)| Kind::Unmask(pb::SecAggUnmaskTask { round, request })),
    ]
}

fn valid_task() -> impl Strategy<Value = pb::Task> {
    (job_id(), any::<u64>(), task_kind()).prop_map(|(job_id, task_id, kind)| pb::Task { job_id, task_id, kind: Some(kind) })
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0), -1e3f64..1e3]
}

fn reply_kind() -> impl Strategy<Value = pb::site_reply::Kind> {
    use pb::site_reply::Kind;
    // Counts within the wire's limit; larger ones are the `Numbers` mutation's business.
    let n = || 0..=fedcare_wire::MAX_EXAMPLES;
    let hist = move || prop::collection::vec(n(), fedcare_protocol::messages::HIST_BINS);
    prop_oneof![
        (any::<bool>(), "[ -~]{0,40}").prop_map(|(accept, reason)| Kind::Decision(pb::JobDecision { accept, reason })),
        (prop::collection::vec(n(), 0..20), prop::collection::vec(any_f64(), 0..20), prop::collection::vec(any_f64(), 0..20))
            .prop_map(|(count, sum, sum_sq)| Kind::Stats(pb::FeatureSums { count, sum, sum_sq })),
        (any::<u32>(), n(), prop::collection::vec(any::<f32>(), 0..40), any_f64())
            .prop_map(|(round, num_examples, delta, train_loss)| Kind::Update(pb::ModelUpdate { round, num_examples, delta, train_loss })),
        (any::<u32>(), n(), any_f64(), n(), prop::option::of(any_f64()), hist(), hist()).prop_map(
            |(round, num_examples, loss_sum, correct, auc, pos_hist, neg_hist)| Kind::Evaluation(pb::Evaluation {
                round,
                num_examples,
                loss_sum,
                correct,
                auc,
                pos_hist,
                neg_hist,
                ..Default::default()
            })
        ),
        "[ -~]{0,40}".prop_map(|reason| Kind::Failed(pb::TaskFailed { reason })),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200), n())
            .prop_map(|(round, keys, num_examples)| Kind::Keys(pb::SecAggKeys { round, keys, num_examples })),
        (any::<u32>(), items(8)).prop_map(|(round, shares)| Kind::Shares(pb::SecAggShares { round, shares })),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(round, masked)| Kind::Masked(pb::SecAggMasked { round, masked })),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(round, response)| Kind::Unmask(pb::SecAggUnmask { round, response })),
    ]
}

fn valid_reply() -> impl Strategy<Value = pb::SiteReply> {
    ("[A-Za-z0-9._-]{1,64}", job_id(), any::<u64>(), reply_kind())
        .prop_map(|(site_id, job_id, task_id, kind)| pb::SiteReply { site_id, job_id, task_id, kind: Some(kind) })
}

fn valid_join() -> impl Strategy<Value = pb::JoinRequest> {
    ("[A-Za-z0-9._-]{1,64}", any::<u32>(), "[ -~]{0,30}", prop::collection::vec(any::<u8>(), 0..40)).prop_map(
        |(site_id, protocol_version, agent_version, identity_public_key)| pb::JoinRequest {
            site_id,
            protocol_version,
            agent_version,
            identity_public_key,
        },
    )
}

// ----- one field broken -----

fn bad_job_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9a-f]{0,63}",
        "[0-9a-f]{65,70}",
        "[0-9A-F]{64}".prop_filter("needs an upper-case digit", |s| s.bytes().any(|b| b.is_ascii_uppercase())),
        "[0-9a-f]{63}[g-z ./\\x00é]",
        Just("é".repeat(32)),
        Just(format!("{}\n", "a".repeat(63))),
    ]
}

fn bad_site_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{65,80}",
        "[a-z]{0,5}[ /\\\\:@\\x00\n\u{e9}\u{202e}][a-z]{0,5}",
        Just("../../etc/passwd".to_owned()),
        Just("ａ".to_owned()),
    ]
}

fn non_finite_f32() -> impl Strategy<Value = f32> {
    prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN])
}

/// How a conversion must end after a mutation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// The message is malformed by the wire rules: it must be refused.
    Refused,
    /// Still well-formed at the wire (the state machine decides): it must convert.
    Converts,
    /// Either, as long as nothing panics and the limits hold.
    Either,
}

#[derive(Debug, Clone)]
enum TaskMutation {
    JobId(String),
    NoKind,
    NoModel,
    NoStandardization,
    ModelValue(Index, f32),
    OddModelValue(Index, f32),
    ModelTooLong,
    LayoutDigest(String),
    StdLengths(usize),
    StdDeviation(Index, f64),
    StdMean(Index, f64),
    Round(u32),
    TooManyItems,
    Spec(String),
    // Secure aggregation setup.
    RoundIdLength(usize),
    GraphK(u32),
    GraphSeed(Vec<u8>),
    Threshold(u32),
    Bits(u32),
    Dim(u64),
    SwapSites(Index, Index),
    KeyLength(Index, usize),
    SiteIndex(Index, u32),
    SiteName(Index, usize),
    DropSites(usize),
    ManySites,
    TotalExamples(u64),
}

fn task_mutation() -> impl Strategy<Value = TaskMutation> {
    use TaskMutation::*;
    prop_oneof![
        bad_job_id().prop_map(JobId),
        Just(NoKind),
        Just(NoModel),
        Just(NoStandardization),
        (any::<Index>(), non_finite_f32()).prop_map(|(i, v)| ModelValue(i, v)),
        (any::<Index>(), finite_f32()).prop_map(|(i, v)| OddModelValue(i, v)),
        Just(ModelTooLong),
        prop_oneof![Just(String::new()), "[ -~]{65,300}", Just("é\u{0}\n".to_owned())].prop_map(LayoutDigest),
        (1usize..5).prop_map(StdLengths),
        (any::<Index>(), prop::sample::select(vec![0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::MIN_POSITIVE]))
            .prop_map(|(i, v)| StdDeviation(i, v)),
        (any::<Index>(), prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY])).prop_map(|(i, v)| StdMean(i, v)),
        prop::sample::select(vec![0, 1, u32::MAX, u32::MAX - 1]).prop_map(Round),
        Just(TooManyItems),
        support::arbitrary_text().prop_map(Spec),
        prop::sample::select(vec![0usize, 1, 31, 33, 64]).prop_map(RoundIdLength),
        prop::sample::select(vec![1u32, 2, 3, 4, 5, 6, 1000, u32::MAX]).prop_map(GraphK),
        prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 32..=32), prop::collection::vec(any::<u8>(), 0..40)].prop_map(GraphSeed),
        prop::sample::select(vec![0u32, 1, 2, 3, 5, 7, 100, u32::MAX]).prop_map(Threshold),
        prop::sample::select(vec![0u32, 1, 64, 65, u32::MAX]).prop_map(Bits),
        prop::sample::select(vec![0u64, 1, 2 * MAX_MODEL_VALUES as u64 + 2, 2 * MAX_MODEL_VALUES as u64 + 3, u64::MAX]).prop_map(Dim),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| SwapSites(a, b)),
        (any::<Index>(), prop::sample::select(vec![0usize, 31, 33])).prop_map(|(i, n)| KeyLength(i, n)),
        (any::<Index>(), any::<u32>()).prop_map(|(i, v)| SiteIndex(i, v)),
        (any::<Index>(), prop::sample::select(vec![0usize, 1024, 1025, 5000])).prop_map(|(i, n)| SiteName(i, n)),
        (0usize..3).prop_map(DropSites),
        Just(ManySites),
        prop::sample::select(vec![0u64, 1, u64::MAX]).prop_map(TotalExamples),
    ]
}

type ModelAndStd<'a> = (&'a mut Option<pb::Model>, &'a mut Option<pb::Standardization>);

fn model_std(t: &mut pb::Task) -> Option<ModelAndStd<'_>> {
    match t.kind.as_mut()? {
        pb::task::Kind::Train(tr) => Some((&mut tr.model, &mut tr.standardization)),
        pb::task::Kind::Eval(ev) => Some((&mut ev.model, &mut ev.standardization)),
        _ => None,
    }
}

fn setup(t: &mut pb::Task) -> Option<&mut pb::SecAggSetup> {
    match t.kind.as_mut()? {
        pb::task::Kind::Train(tr) => tr.secagg.as_mut(),
        _ => None,
    }
}

/// Applies a mutation; returns what the conversion must do (`Converts` if the mutation does
/// not apply to this task's kind and it stays valid).
fn mutate_task(t: &mut pb::Task, m: &TaskMutation) -> Expect {
    use pb::task::Kind;
    use TaskMutation::*;
    match m {
        JobId(id) => {
            t.job_id = id.clone();
            Expect::Refused
        }
        NoKind => {
            t.kind = None;
            Expect::Refused
        }
        NoModel => model_std(t).map_or(Expect::Converts, |(m, _)| {
            *m = None;
            Expect::Refused
        }),
        NoStandardization => model_std(t).map_or(Expect::Converts, |(_, s)| {
            *s = None;
            Expect::Refused
        }),
        ModelValue(i, v) | OddModelValue(i, v) => match model_std(t) {
            Some((Some(m), _)) if !m.values.is_empty() => {
                let at = i.index(m.values.len());
                m.values[at] = *v;
                if v.is_finite() { Expect::Converts } else { Expect::Refused }
            }
            _ => Expect::Converts,
        },
        ModelTooLong => match model_std(t) {
            Some((Some(m), _)) => {
                m.values = vec![0.0; MAX_MODEL_VALUES + 1];
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        LayoutDigest(d) => {
            if let Some((Some(m), _)) = model_std(t) {
                m.layout_digest = d.clone();
            }
            Expect::Converts
        }
        StdLengths(extra) => match model_std(t) {
            Some((_, Some(s))) => {
                s.std.extend(std::iter::repeat_n(1.0, *extra));
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        StdDeviation(i, v) => match model_std(t) {
            Some((_, Some(s))) if !s.std.is_empty() => {
                let at = i.index(s.std.len());
                s.std[at] = *v;
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        StdMean(i, v) => match model_std(t) {
            Some((_, Some(s))) if !s.mean.is_empty() => {
                let at = i.index(s.mean.len());
                s.mean[at] = *v;
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        Round(r) => {
            match t.kind.as_mut() {
                Some(Kind::Train(x)) => x.round = *r,
                Some(Kind::Eval(x)) => x.round = *r,
                Some(Kind::ShareKeys(x)) => x.round = *r,
                Some(Kind::Mask(x)) => x.round = *r,
                Some(Kind::Unmask(x)) => x.round = *r,
                _ => {}
            }
            Expect::Converts
        }
        TooManyItems => match t.kind.as_mut() {
            Some(Kind::ShareKeys(x)) => {
                x.keys = vec![Vec::new(); MAX_SECAGG_ITEMS + 1];
                Expect::Refused
            }
            Some(Kind::Mask(x)) => {
                x.shares = vec![Vec::new(); MAX_SECAGG_ITEMS + 1];
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        Spec(text) => {
            if let Some(Kind::Offer(o)) = t.kind.as_mut() {
                o.spec_toml = text.clone();
            }
            Expect::Converts
        }
        RoundIdLength(n) => setup(t).map_or(Expect::Converts, |s| {
            s.round_id = vec![7; *n];
            Expect::Refused
        }),
        GraphK(k) => setup(t).map_or(Expect::Converts, |s| {
            if *k == s.graph_k {
                return Expect::Converts;
            }
            s.graph_k = *k;
            if s.graph_seed.len() != 32 {
                s.graph_seed = vec![0; 32];
            }
            Expect::Either
        }),
        GraphSeed(seed) => setup(t).map_or(Expect::Converts, |s| {
            let valid = s.graph_k == 0 || *seed == s.graph_seed;
            s.graph_seed = seed.clone();
            // The seed is ignored for the complete graph.
            if valid { Expect::Converts } else { Expect::Refused }
        }),
        Threshold(v) => setup(t).map_or(Expect::Converts, |s| {
            let degree = if s.graph_k == 0 { s.sites.len() - 1 } else { s.graph_k as usize };
            let ok = (*v as usize) <= degree && 2 * (*v as usize) > degree;
            s.threshold = *v;
            if ok { Expect::Converts } else { Expect::Refused }
        }),
        Bits(b) => setup(t).map_or(Expect::Converts, |s| {
            s.bits = *b;
            if (1..=64).contains(b) { Expect::Converts } else { Expect::Refused }
        }),
        Dim(d) => setup(t).map_or(Expect::Converts, |s| {
            s.dim = *d;
            if (1..=2 * MAX_MODEL_VALUES as u64 + 2).contains(d) { Expect::Converts } else { Expect::Refused }
        }),
        SwapSites(a, b) => setup(t).map_or(Expect::Converts, |s| {
            let (i, j) = (a.index(s.sites.len()), b.index(s.sites.len()));
            if i == j {
                return Expect::Converts;
            }
            s.sites.swap(i, j);
            Expect::Refused
        }),
        KeyLength(i, n) => setup(t).map_or(Expect::Converts, |s| {
            let at = i.index(s.sites.len());
            s.sites[at].identity_public_key.resize(*n, 0xff);
            Expect::Refused
        }),
        SiteIndex(i, v) => setup(t).map_or(Expect::Converts, |s| {
            let at = i.index(s.sites.len());
            let same = s.sites[at].index == *v;
            s.sites[at].index = *v;
            if same { Expect::Converts } else { Expect::Refused }
        }),
        SiteName(i, n) => setup(t).map_or(Expect::Converts, |s| {
            let at = i.index(s.sites.len());
            s.sites[at].site_id = "n".repeat(*n);
            if *n <= 1024 { Expect::Converts } else { Expect::Refused }
        }),
        DropSites(keep) => setup(t).map_or(Expect::Converts, |s| {
            if *keep >= s.sites.len() {
                return Expect::Converts;
            }
            s.sites.truncate(*keep);
            Expect::Refused
        }),
        ManySites => setup(t).map_or(Expect::Converts, |s| {
            let key = |i: usize| {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&(i as u64).to_be_bytes());
                k.to_vec()
            };
            s.sites = (0..=MAX_SECAGG_ITEMS)
                .map(|i| pb::SecAggSite { index: i as u32, site_id: "s".into(), identity_public_key: key(i) })
                .collect();
            Expect::Refused
        }),
        TotalExamples(n) => setup(t).map_or(Expect::Converts, |s| {
            // The site refuses 0 against the job; at the wire it is well-formed.
            s.total_examples = *n;
            Expect::Converts
        }),
    }
}

#[derive(Debug, Clone)]
enum ReplyMutation {
    SiteId(String),
    JobId(String),
    NoKind,
    DeltaTooLong,
    DeltaValue(Index, f32),
    TooManyShares,
    Numbers(u64, f64),
}

fn reply_mutation() -> impl Strategy<Value = ReplyMutation> {
    use ReplyMutation::*;
    prop_oneof![
        bad_site_id().prop_map(SiteId),
        bad_job_id().prop_map(JobId),
        Just(NoKind),
        Just(DeltaTooLong),
        (any::<Index>(), prop_oneof![non_finite_f32(), finite_f32()]).prop_map(|(i, v)| DeltaValue(i, v)),
        Just(TooManyShares),
        (prop::sample::select(vec![0u64, 1, u64::MAX]), any_f64()).prop_map(|(n, f)| Numbers(n, f)),
    ]
}

fn mutate_reply(r: &mut pb::SiteReply, m: &ReplyMutation) -> Expect {
    use pb::site_reply::Kind;
    use ReplyMutation::*;
    match m {
        SiteId(s) => {
            r.site_id = s.clone();
            Expect::Refused
        }
        JobId(s) => {
            r.job_id = s.clone();
            Expect::Refused
        }
        NoKind => {
            r.kind = None;
            Expect::Refused
        }
        DeltaTooLong => match r.kind.as_mut() {
            Some(Kind::Update(u)) => {
                u.delta = vec![0.0; MAX_MODEL_VALUES + 1];
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        DeltaValue(i, v) => {
            // Non-finite values in an update are the state machine's to refuse (it knows the
            // job); the wire passes them on.
            if let Some(Kind::Update(u)) = r.kind.as_mut()
                && !u.delta.is_empty()
            {
                let at = i.index(u.delta.len());
                u.delta[at] = *v;
            }
            Expect::Converts
        }
        TooManyShares => match r.kind.as_mut() {
            Some(Kind::Shares(s)) => {
                s.shares = vec![Vec::new(); MAX_SECAGG_ITEMS + 1];
                Expect::Refused
            }
            _ => Expect::Converts,
        },
        Numbers(n, f) => {
            // Counts over the wire's limit (a trillion) are refused; any float passes.
            let over = |x: u64| x > fedcare_wire::MAX_EXAMPLES;
            let refused = match r.kind.as_mut() {
                Some(Kind::Update(u)) => {
                    u.num_examples = *n;
                    u.train_loss = *f;
                    over(*n)
                }
                Some(Kind::Evaluation(e)) => {
                    e.num_examples = *n;
                    e.correct = n.wrapping_add(1);
                    e.loss_sum = *f;
                    e.auc = Some(*f);
                    over(*n) || over(n.wrapping_add(1))
                }
                Some(Kind::Keys(k)) => {
                    k.num_examples = *n;
                    over(*n)
                }
                Some(Kind::Stats(s)) => {
                    s.count.iter_mut().for_each(|c| *c = *n);
                    s.sum.iter_mut().for_each(|v| *v = *f);
                    !s.count.is_empty() && over(*n)
                }
                _ => false,
            };
            if refused { Expect::Refused } else { Expect::Converts }
        }
    }
}

fn assert_expected<T: std::fmt::Debug>(expect: Expect, result: &Result<(), WireError>, what: &T) {
    match (expect, result) {
        (Expect::Refused, Ok(())) => panic!("accepted a malformed message: {what:#?}"),
        (Expect::Converts, Err(e)) => panic!("refused a well-formed message ({e}): {what:#?}"),
        _ => {}
    }
}

// ----- the harness -----

proptest! {
    #![proptest_config(support::config(5000))]

    /// Raw bytes: mostly undecodable, which is fine; what decodes converts or is refused.
    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_bytes(&bytes);
    }

    /// Byte-level mutations of valid encoded messages: decodable, but with fields cut,
    /// duplicated, retyped or out of range.
    #[test]
    fn mutated_encodings_never_panic(
        message in prop_oneof![
            valid_task().prop_map(|t| t.encode_to_vec()),
            valid_reply().prop_map(|r| r.encode_to_vec()),
            valid_join().prop_map(|j| j.encode_to_vec()),
        ],
        ms in support::mutations(4),
    ) {
        check_bytes(&support::mutated(&message, &ms));
    }

    /// Byte-level mutations of the corpus files.
    #[test]
    fn mutated_corpus_never_panics(pick in any::<Index>(), ms in support::mutations(6)) {
        let (_, bytes) = pick.get(corpus());
        check_bytes(&support::mutated(bytes, &ms));
    }

    /// A valid task converts; with one field broken it converts or is refused as the wire
    /// rules say.
    #[test]
    fn tasks_with_one_field_broken(task in valid_task(), m in prop::option::of(task_mutation())) {
        let mut t = task.clone();
        let expect = m.as_ref().map_or(Expect::Converts, |m| mutate_task(&mut t, m));
        let result = check_task(t.clone());
        assert_expected(expect, &result, &(m, task.kind));
    }

    /// A valid reply converts; with one field broken it converts or is refused as the wire
    /// rules say.
    #[test]
    fn replies_with_one_field_broken(reply in valid_reply(), m in prop::option::of(reply_mutation())) {
        let mut r = reply.clone();
        let expect = m.as_ref().map_or(Expect::Converts, |m| mutate_reply(&mut r, m));
        let result = check_reply(r);
        assert_expected(expect, &result, &(m, reply));
    }

    /// A join's site name converts exactly when it is a valid site id.
    #[test]
    fn join_site_names(join in valid_join(), bad in prop::option::of(bad_site_id())) {
        let mut j = join;
        if let Some(b) = &bad {
            j.site_id = b.clone();
        }
        let result = check_join(j);
        prop_assert_eq!(result.is_ok(), bad.is_none(), "{:?}", result);
    }
}

fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: std::sync::OnceLock<Vec<(String, Vec<u8>)>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| support::corpus(&fuzz_root(), "wire"))
}

/// Every corpus file as a regression case: decoded as each message type, converted, checked.
/// A file named `bad-task-...` must not convert as a task, `bad-reply-...` not as a reply,
/// any other `bad-...` as neither.
#[test]
fn corpus_regressions() {
    let mut decoded = 0;
    for (name, bytes) in corpus() {
        eprintln!("wire corpus: {name}");
        check_bytes(bytes);
        decoded += usize::from(pb::Task::decode(bytes.as_slice()).is_ok());
        let as_task = pb::Task::decode(bytes.as_slice()).ok().map(|t| task_from_wire(t).is_ok()) == Some(true);
        let as_reply = pb::SiteReply::decode(bytes.as_slice()).ok().map(|r| reply_from_wire(r).is_ok()) == Some(true);
        match name.trim_start_matches("seed-") {
            n if n.starts_with("bad-task-") => assert!(!as_task, "{name} converts as a task"),
            n if n.starts_with("bad-reply-") => assert!(!as_reply, "{name} converts as a reply"),
            n if n.starts_with("bad-") => assert!(!as_task && !as_reply, "{name} converts"),
            _ => {}
        }
    }
    assert!(decoded > 0, "no corpus file decodes as a task");
}

/// Found by fuzzing: `reply_from_wire` once passed histograms of any length through (only the
/// coordinator's `EvalCounts::validate` refused them later). Minimal input: an `Evaluation`
/// reply with `pos_hist = []`, `neg_hist = []`.
#[test]
fn evaluation_histograms_of_the_wrong_size_are_refused() {
    let reply = pb::SiteReply {
        site_id: "va".into(),
        job_id: "ab".repeat(32),
        task_id: 1,
        kind: Some(pb::site_reply::Kind::Evaluation(pb::Evaluation {
            round: 1,
            num_examples: 0,
            loss_sum: 0.0,
            correct: 0,
            auc: None,
            pos_hist: vec![],
            neg_hist: vec![],
            ..Default::default()
        })),
    };
    let err = reply_from_wire(reply).expect_err("histograms of 0 bins were accepted");
    assert!(err.to_string().contains("100 bins"), "{err}");
}

/// Writes the seed corpus (`tests/fuzz/corpus/wire/seed-*.bin`): one valid message of each
/// kind and a few malformed ones. Run with `-- --ignored write_seed_corpus` after changing
/// the protocol; other files in the directory (found cases) are left alone.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpus"]
fn write_seed_corpus() {
    use pb::site_reply::Kind as R;
    use pb::task::Kind as T;
    let dir = support::corpus_dir(&fuzz_root(), "wire");
    std::fs::create_dir_all(&dir).unwrap();
    let job = "ab".repeat(32);
    let model = || Some(pb::Model { layout_digest: "layout-1".into(), values: vec![0.25, -1.0, 3.0], values_sha256: vec![] });
    let std = || Some(pb::Standardization { mean: vec![1.0, 2.0], std: vec![0.5, 1.0] });
    let key = |b: u8| fedcare_secagg::IdentityKey::from_seed(&[b; 32]).unwrap().public_key();
    let mut keys = vec![key(1), key(2), key(3)];
    keys.sort();
    let setup = pb::SecAggSetup {
        round_id: vec![7; 32],
        sites: keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| pb::SecAggSite { index: i as u32, site_id: format!("site{i}"), identity_public_key: k })
            .collect(),
        bits: 32,
        dim: 4,
        threshold: 2,
        graph_k: 0,
        graph_seed: vec![],
        total_examples: 40,
    };
    let spec = include_str!("../../../examples/heart-disease/job.toml").to_owned();
    let task = |name: &str, kind: T| (name.to_owned(), pb::Task { job_id: job.clone(), task_id: 7, kind: Some(kind) }.encode_to_vec());
    let reply = |name: &str, kind: R| {
        (name.to_owned(), pb::SiteReply { site_id: "cleveland".into(), job_id: job.clone(), task_id: 9, kind: Some(kind) }.encode_to_vec())
    };
    let mut hist = vec![0u64; 100];
    hist[80] = 5;
    let files = vec![
        task("task-offer", T::Offer(pb::JobOffer { spec_toml: spec })),
        task("task-stats", T::Stats(pb::StatsTask {})),
        task("task-train-plain", T::Train(pb::TrainTask { round: 1, model: model(), standardization: std(), secagg: None })),
        task("task-train-secure", T::Train(pb::TrainTask { round: 1, model: model(), standardization: std(), secagg: Some(setup.clone()) })),
        task("task-eval", T::Eval(pb::EvalTask { round: 1, model: model(), standardization: std() })),
        task("task-share-keys", T::ShareKeys(pb::SecAggShareKeysTask { round: 1, keys: vec![vec![1; 100], vec![2; 100]] })),
        task("task-mask", T::Mask(pb::SecAggMaskTask { round: 1, shares: vec![vec![3; 97]] })),
        task("task-unmask", T::Unmask(pb::SecAggUnmaskTask { round: 1, request: vec![4; 20] })),
        task("task-end", T::End(pb::JobEnd { success: false, reason: "r".into() })),
        reply("reply-decision", R::Decision(pb::JobDecision { accept: true, reason: String::new() })),
        reply("reply-stats", R::Stats(pb::FeatureSums { count: vec![10, 10], sum: vec![5.0, 6.0], sum_sq: vec![30.0, 40.0] })),
        reply("reply-update", R::Update(pb::ModelUpdate { round: 1, num_examples: 10, delta: vec![0.5, 0.25, -1.0], train_loss: 0.7 })),
        reply(
            "reply-evaluation",
            R::Evaluation(pb::Evaluation {
                round: 1,
                num_examples: 5,
                loss_sum: 2.0,
                correct: 4,
                auc: Some(0.9),
                pos_hist: hist.clone(),
                neg_hist: vec![0; 100],
                ..Default::default()
            }),
        ),
        reply("reply-failed", R::Failed(pb::TaskFailed { reason: "out of memory".into() })),
        reply("reply-keys", R::Keys(pb::SecAggKeys { round: 1, keys: vec![1; 100], num_examples: 7 })),
        reply("reply-shares", R::Shares(pb::SecAggShares { round: 1, shares: vec![vec![2; 97], vec![3; 97]] })),
        reply("reply-masked", R::Masked(pb::SecAggMasked { round: 1, masked: vec![5; 64] })),
        reply("reply-unmask", R::Unmask(pb::SecAggUnmask { round: 1, response: vec![6; 50] })),
        (
            "join".to_owned(),
            pb::JoinRequest { site_id: "cleveland".into(), protocol_version: 1, agent_version: "site-agent 0.1.0".into(), identity_public_key: key(1) }
                .encode_to_vec(),
        ),
        // Malformed: refused, never a panic.
        task("bad-task-nan-model", T::Train(pb::TrainTask {
            round: 1,
            model: Some(pb::Model { layout_digest: "d".into(), values: vec![f32::NAN], values_sha256: vec![] }),
            standardization: std(),
            secagg: None,
        })),
        task("bad-task-zero-deviation", T::Eval(pb::EvalTask {
            round: 1,
            model: model(),
            standardization: Some(pb::Standardization { mean: vec![0.0], std: vec![0.0] }),
        })),
        task("bad-task-setup-threshold", T::Train(pb::TrainTask {
            round: 1,
            model: model(),
            standardization: std(),
            secagg: Some(pb::SecAggSetup { threshold: u32::MAX, ..setup.clone() }),
        })),
        task("bad-task-setup-dim", T::Train(pb::TrainTask {
            round: 1,
            model: model(),
            standardization: std(),
            secagg: Some(pb::SecAggSetup { dim: u64::MAX, graph_k: u32::MAX, ..setup }),
        })),
        (
            "bad-reply-site-id".to_owned(),
            pb::SiteReply { site_id: "../../etc".into(), job_id: job.clone(), task_id: 1, kind: Some(R::Failed(pb::TaskFailed::default())) }
                .encode_to_vec(),
        ),
        ("bad-reply-no-kind".to_owned(), pb::SiteReply { site_id: "va".into(), job_id: job.clone(), task_id: 1, kind: None }.encode_to_vec()),
        ("bad-truncated-varint".to_owned(), vec![0x18, 0xff, 0xff, 0xff]),
        ("bad-huge-length".to_owned(), vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.join(format!("seed-{name}.bin")), bytes).unwrap();
    }
}
