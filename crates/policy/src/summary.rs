//! A job as a privacy officer reviews it (`site-agent jobs show`): what it trains, on which
//! columns, with which protections, and what leaves the site.
//!
//! Every value comes from the job spec (and the policy, for the verdict lines), never from the
//! site's data. Strings from the spec are printed with control characters escaped, so a job
//! cannot forge a line of its own review (a description ending in "\nPolicy: passes").

use fedcare_data::{FeatureKind, LabelRule};
use fedcare_job::{JobSpec, PrivacyUnit, SiteMechanism};
use fedcare_models::{ModelSpec, OptimizerKind};

use crate::policy::{Policy, Verdict, clean, plural};

/// A multi-line review of a job: name, description, hash, model, training, sites, columns,
/// secure aggregation, differential privacy and what leaves the site.
pub fn summary(spec: &JobSpec) -> String {
    render(spec, None)
}

/// [`summary`] followed by the policy's verdict on the job: every violation, or how it is
/// approved.
pub fn summary_with_policy(spec: &JobSpec, policy: &Policy) -> String {
    render(spec, Some(policy))
}

fn render(spec: &JobSpec, policy: Option<&Policy>) -> String {
    let id = spec.id();
    let mut out: Vec<String> = Vec::new();

    out.push(format!("Job \"{}\"", clean(&spec.name)));
    let description = spec.description.trim();
    if !description.is_empty() {
        out.push(format!("  {}", clean(description)));
    }
    out.push(format!("  hash: {id}"));
    out.push(String::new());

    let model = match &spec.model {
        ModelSpec::LogisticRegression => "logistic_regression".to_owned(),
        ModelSpec::Mlp { hidden } => {
            let widths: Vec<String> = hidden.iter().map(ToString::to_string).collect();
            format!("mlp, hidden layers of width {}", widths.join(", "))
        }
    };
    out.push(format!("Model: {model}"));
    let t = &spec.training;
    let optimizer = match t.optimizer {
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Adam => "adam",
    };
    out.push(format!(
        "Training: {} round{}; in each, {} local epoch{} with batch size {}, optimiser {optimizer}, learning rate {}; seed {}",
        spec.rounds,
        plural(u64::from(spec.rounds)),
        t.local_epochs,
        plural(t.local_epochs as u64),
        t.batch_size,
        t.learning_rate,
        spec.seed,
    ));
    out.push(format!(
        "Sites: at least {} must join; a round completes with at least {}",
        spec.min_sites,
        spec.round_quorum()
    ));
    let split = &spec.schema.split;
    out.push(format!(
        "Evaluation: on a held-out {}% of each site's records (split seed {}{})",
        (split.test_fraction * 1000.0).round() / 10.0,
        split.seed,
        if split.stratify {
            ", stratified by label"
        } else {
            ""
        },
    ));

    // Columns: features in the model's order, then the label.
    let features = &spec.schema.features;
    let label = &spec.schema.label;
    out.push(format!(
        "Columns used: {} ({} feature{} and the label)",
        features.len() + 1,
        features.len(),
        plural(features.len() as u64)
    ));
    let width = features
        .iter()
        .map(|f| clean(&f.name).chars().count())
        .chain([clean(&label.name).chars().count()])
        .max()
        .unwrap_or(0);
    for f in features {
        let kind = match &f.kind {
            FeatureKind::Numeric => match spec.privacy.feature_bounds.get(&f.name) {
                Some([lo, hi]) if spec.privacy.unit != PrivacyUnit::None => {
                    format!("numeric, clamped to [{lo}, {hi}] for the noised statistics")
                }
                _ => "numeric".to_owned(),
            },
            FeatureKind::Categorical { levels } => format!("categorical, levels {}", join(levels)),
        };
        out.push(format!("  {:width$}  feature, {kind}", clean(&f.name)));
    }
    let rule = match label.positive_if {
        LabelRule::GreaterThan(v) => format!("positive if > {v}"),
        LabelRule::Equals(v) => format!("positive if = {v}"),
    };
    let allowed = label
        .allowed
        .as_ref()
        .map(|a| format!("; allowed values {}", join(a)))
        .unwrap_or_default();
    out.push(format!(
        "  {:width$}  label, {rule}{allowed}",
        clean(&label.name)
    ));

    let sa = &spec.secure_aggregation;
    out.push(if sa.enabled {
        format!(
            "Secure aggregation: on (SecAgg+ in Z_2^{}; each coordinate of a weighted update clipped to ±{}; up to {}% of a round's sites may drop out)",
            sa.bits,
            sa.clip,
            (sa.dropout_fraction * 1000.0).round() / 10.0,
        )
    } else {
        "Secure aggregation: OFF (the coordinator sees each site's update)".to_owned()
    });
    let privacy = match spec.privacy_plan() {
        Ok(Some(plan)) => plan.summary(),
        Ok(None) => "none (privacy unit \"none\": nothing is noised)".to_owned(),
        Err(e) => format!(
            "the job's privacy plan cannot be computed: {}",
            clean(&e.to_string())
        ),
    };
    out.push(format!("Differential privacy: {privacy}"));

    out.push(
        "What leaves this site (never records, nor per-record scores or predictions):".to_owned(),
    );
    for line in what_leaves(spec) {
        out.push(format!("  - {line}"));
    }

    if let Some(policy) = policy {
        out.push(String::new());
        match policy.evaluate(spec).verdict() {
            Verdict::Refuse(violations) => {
                out.push(format!(
                    "Policy: REFUSED ({} reason{})",
                    violations.len(),
                    plural(violations.len() as u64)
                ));
                for v in violations {
                    out.push(format!("  - {v}"));
                }
            }
            Verdict::Approve => {
                out.push("Policy: passes every rule; approved automatically".to_owned())
            }
            Verdict::AwaitApproval => out.push(format!(
                "Policy: passes every rule; waits for approval: site-agent jobs approve {id}"
            )),
        }
    }

    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// One line per kind of message the site sends for this job.
fn what_leaves(spec: &JobSpec) -> Vec<String> {
    let p = &spec.privacy;
    let clip = p
        .clip_norm
        .map_or_else(|| "?".to_owned(), |c| c.to_string());
    let noise = match p.unit {
        PrivacyUnit::None => "not noised".to_owned(),
        PrivacyUnit::Record => format!(
            "trained with DP-SGD (each record's gradient clipped to L2 norm {clip} and noised at this site)"
        ),
        PrivacyUnit::Site => match p.mechanism.unwrap_or(SiteMechanism::Distributed) {
            SiteMechanism::Distributed => {
                format!(
                    "clipped to L2 norm {clip} and noised at this site (distributed discrete Gaussian) before masking"
                )
            }
            SiteMechanism::DistributedSkellam => {
                format!("clipped to L2 norm {clip} and noised at this site (distributed Skellam) before masking")
            }
            SiteMechanism::Central => format!(
                "clipped to L2 norm {clip}; the noise is added by the coordinator, which therefore sees the un-noised sum"
            ),
        },
    };
    let mask = if spec.secure_aggregation.enabled {
        "masked by secure aggregation, so the coordinator learns only the sum over a round's sites"
    } else {
        "sent unmasked, so the coordinator sees this site's own update"
    };
    let (count, stats) = match p.unit {
        PrivacyUnit::None => (
            "the site's exact number of training examples",
            "per-feature count, sum and sum of squares of the training split, exact (not noised)",
        ),
        PrivacyUnit::Record => (
            "the site's number of training examples as noised in its statistics",
            "per-feature count, sum and sum of squares of the training split, clamped to the ranges above and noised",
        ),
        PrivacyUnit::Site => (
            "no example count (every site weighs the same)",
            "nothing computed from the data (values derived from the job's public feature ranges)",
        ),
    };
    vec![
        format!("model updates{}, {noise}; {mask}", if p.unit == PrivacyUnit::None { " with their training loss" } else { "" }),
        format!("with each update: {count}"),
        format!("statistics: {stats}"),
        "evaluation of each round's model on the held-out split: number of examples, correct predictions, summed loss and 100-bin score histograms by class, exact (not noised)".to_owned(),
    ]
}

fn join(values: &[i64]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
