//! Saving and loading models as safetensors (written directly, read through burn-store). Safetensors is a standard,
//! inspectable format (readable from Python too); tensor names are the [`ParamLayout`] names
//! (`linear.weight`, ...) and every tensor is f32 in Burn's shapes.
//!
//! [`ParamLayout`]: crate::ParamLayout

use std::path::Path;

use burn::store::{ModuleSnapshot, ModuleStore, SafetensorsStore};
use burn::tensor::{DType, Device};

use crate::net::Net;
use crate::{FlatParams, ModelError, ModelSpec, init, layout};

fn store_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Store(e.to_string())
}

/// Builds the Burn module for saving through Burn's writer, after checking the parameters fit
/// the spec (the tests' oracle for [`to_bytes`]).
#[cfg(test)]
fn module_for(spec: &ModelSpec, params: &FlatParams) -> Result<(Net, usize), ModelError> {
    let n_features = module_layout_check(spec, params)?;
    Ok((
        Net::from_flat(spec, n_features, params, &Device::flex()),
        n_features,
    ))
}

#[cfg(test)]
fn with_metadata(
    store: SafetensorsStore,
    spec: &ModelSpec,
    params: &FlatParams,
) -> SafetensorsStore {
    store
        .metadata("fedcare.model", spec.name())
        .metadata("fedcare.layout_digest", params.layout.digest())
}

/// Checks every tensor in the store against the expected layout (names, shapes, f32) before
/// handing it to Burn, so a wrong or hostile file is a typed error rather than a surprise.
fn check_store(
    store: &mut SafetensorsStore,
    spec: &ModelSpec,
    n_features: usize,
) -> Result<(), ModelError> {
    let expected = layout(spec, n_features);
    let tensors = store.get_all_tensors().map_err(store_err)?;
    if tensors.len() != expected.entries.len() {
        return Err(ModelError::Store(format!(
            "file holds {} tensors, {} {} on {n_features} features needs {}",
            tensors.len(),
            spec.name(),
            expected.digest(),
            expected.entries.len()
        )));
    }
    for e in &expected.entries {
        let t = tensors
            .get(&e.name)
            .ok_or_else(|| ModelError::Store(format!("missing tensor {:?}", e.name)))?;
        if t.shape.to_vec() != e.shape {
            return Err(ModelError::Store(format!(
                "tensor {:?} has shape {:?}, expected {:?}",
                e.name,
                t.shape.to_vec(),
                e.shape
            )));
        }
        if t.dtype != DType::F32 {
            return Err(ModelError::Store(format!(
                "tensor {:?} has dtype {:?}, expected F32",
                e.name, t.dtype
            )));
        }
    }
    Ok(())
}

/// Applies a checked store to a fresh module and flattens it.
fn load_from_store(
    mut store: SafetensorsStore,
    spec: &ModelSpec,
    n_features: usize,
) -> Result<FlatParams, ModelError> {
    spec.validate()?;
    if n_features == 0 {
        return Err(ModelError::Shape("n_features must be at least 1".into()));
    }
    check_store(&mut store, spec, n_features)?;
    // Any values do as a target: every tensor is overwritten (checked below).
    let mut net = Net::from_flat(
        spec,
        n_features,
        &init(spec, n_features, 0),
        &Device::flex(),
    );
    let result = net.load_from(&mut store).map_err(store_err)?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(ModelError::Store(format!("incomplete load: {result}")));
    }
    // Rejects NaN/inf values in the file via FlatParams::new.
    net.to_flat(spec, n_features)
}

/// Saves the model as a safetensors file at `path`, replacing any existing file atomically
/// (written to a temporary file beside it, then renamed), with the same bytes as [`to_bytes`].
pub fn save(spec: &ModelSpec, params: &FlatParams, path: &Path) -> Result<(), ModelError> {
    let bytes = to_bytes(spec, params)?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ModelError::Store(format!("cannot write {}: {e}", path.display())))
}

/// Loads a safetensors file written by [`save`] for `spec` on `n_features` inputs.
pub fn load(spec: &ModelSpec, n_features: usize, path: &Path) -> Result<FlatParams, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Store(format!(
            "no model file at {}",
            path.display()
        )));
    }
    load_from_store(SafetensorsStore::from_file(path), spec, n_features)
}

/// Same as [`save`] but to an in-memory safetensors buffer, for sending over the network.
///
/// Written straight from the flat vector: safetensors is an 8-byte little-endian header
/// length, a JSON header (each tensor's dtype, shape and byte range, and string metadata) and
/// the tensors' little-endian bytes. Going through a Burn module and its writer held several
/// more copies of the model at once, the coordinator's peak for a large model; this holds one.
/// The layout matches Burn's writer (tensors in name order, header padded with spaces to an
/// 8-byte boundary, keys sorted so the same model always gives the same bytes), Burn's reader
/// loads it ([`from_bytes`]), and the tensor bytes equal Burn's own (tested).
pub fn to_bytes(spec: &ModelSpec, params: &FlatParams) -> Result<Vec<u8>, ModelError> {
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    module_layout_check(spec, params)?;
    let mut tensors: Vec<(&str, &[usize], &[f32])> = Vec::with_capacity(params.layout.entries.len());
    let mut at = 0;
    for e in &params.layout.entries {
        let n = e.numel();
        let values = params.values.get(at..at + n).ok_or_else(|| ModelError::Shape("parameters shorter than their layout".into()))?;
        tensors.push((&e.name, &e.shape, values));
        at += n;
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut header: BTreeMap<String, Value> = BTreeMap::new();
    let metadata: BTreeMap<&str, String> = BTreeMap::from([
        ("fedcare.layout_digest", params.layout.digest()),
        ("fedcare.model", spec.name().to_string()),
        ("format", "safetensors".to_string()),
        ("producer", "fedcare".to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
    ]);
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for (name, shape, values) in &tensors {
        let end = offset + values.len() * 4;
        header.insert((*name).to_string(), json!({"data_offsets": [offset, end], "dtype": "F32", "shape": shape}));
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| ModelError::Store(format!("safetensors header: {e}")))?;
    // Pad so the data starts on an 8-byte boundary, as the format's writers do.
    text.resize((8 + text.len()).next_multiple_of(8) - 8, b' ');
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, values) in &tensors {
        for v in *values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(out)
}

/// Checks the parameters fit the spec; returns the model's input width.
fn module_layout_check(spec: &ModelSpec, params: &FlatParams) -> Result<usize, ModelError> {
    spec.validate()?;
    let n_features = params
        .layout
        .entries
        .first()
        .and_then(|e| e.shape.first().copied())
        .ok_or_else(|| ModelError::Shape("parameters have an empty layout".into()))?;
    params.check_layout(&layout(spec, n_features))?;
    Ok(n_features)
}

/// The file Burn's own writer makes for these parameters, with a canonical header: the oracle
/// for [`to_bytes`] in the tests.
#[cfg(test)]
fn to_bytes_through_burn(spec: &ModelSpec, params: &FlatParams) -> Result<Vec<u8>, ModelError> {
    let (net, _) = module_for(spec, params)?;
    let mut store = with_metadata(SafetensorsStore::from_bytes(None), spec, params);
    net.save_into(&mut store).map_err(store_err)?;
    canonical_header(store.get_bytes().map_err(store_err)?)
}

/// Rewrites a safetensors header with its JSON keys sorted, so the same model always gives the
/// same bytes (Burn writes the metadata from a hash map, in a different order each run). The
/// file's hash can then name the model in reports and model cards. The header keeps its length
/// (it is padded with spaces, as the format allows), so the tensor data does not move.
#[cfg(test)]
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>, ModelError> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let ordered: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(ordered.into_iter().collect())
            }
            other => other,
        }
    }
    let bad = |why: &str| ModelError::Store(format!("safetensors header: {why}"));
    let len_bytes: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| bad("too short"))?;
    let n = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("length overflows"))?;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("length past the end"))?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&sorted(value)).map_err(|e| bad(&e.to_string()))?;
    if text.len() > n {
        return Err(bad("canonical header longer than the original"));
    }
    text.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&text);
    Ok(bytes)
}

/// Same as [`load`] but from a buffer made by [`to_bytes`].
pub fn from_bytes(
    spec: &ModelSpec,
    n_features: usize,
    bytes: &[u8],
) -> Result<FlatParams, ModelError> {
    load_from_store(
        SafetensorsStore::from_bytes(Some(bytes.to_vec())),
        spec,
        n_features,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::separable;
    use crate::{OptimizerKind, TrainConfig, predict, train};

    fn trained(spec: &ModelSpec, d: usize) -> (FlatParams, Vec<f32>) {
        let (x, y) = separable(120, d, 4);
        let c = TrainConfig {
            local_epochs: 3,
            batch_size: 16,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.01,
            seed: 1,
        };
        (
            train(spec, &init(spec, d, 2), &x, d, &y, &c)
                .unwrap()
                .params,
            x,
        )
    }

    /// Splits a safetensors file into its parsed header and its data section.
    fn parts(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0, "data starts on an 8-byte boundary");
        (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), bytes[8 + n..].to_vec())
    }

    #[test]
    fn the_direct_writer_matches_burns_writer_and_burn_reads_it() {
        for (spec, d) in [(ModelSpec::LogisticRegression, 15), (ModelSpec::Mlp { hidden: vec![4, 3] }, 5), (ModelSpec::Mlp { hidden: vec![7, 6, 5] }, 3)] {
            let (params, _) = trained(&spec, d);
            let ours = to_bytes(&spec, &params).unwrap();
            let burns = to_bytes_through_burn(&spec, &params).unwrap();
            let ((mut h1, d1), (mut h2, d2)) = (parts(&ours), parts(&burns));
            assert_eq!(d1, d2, "{spec:?}: the tensor bytes are Burn's");
            // The same tensor entries; the metadata differs only in who wrote the file.
            for h in [&mut h1, &mut h2] {
                let m = h["__metadata__"].as_object_mut().unwrap();
                m.remove("producer");
                m.remove("version");
            }
            assert_eq!(h1, h2, "{spec:?}");
            let back = from_bytes(&spec, d, &ours).unwrap();
            assert_eq!(back.values, params.values, "{spec:?}: Burn's reader gets the same values");
        }
    }

    #[test]
    fn the_same_model_always_gives_the_same_bytes() {
        let spec = ModelSpec::Mlp { hidden: vec![4, 3] };
        let (params, _) = trained(&spec, 5);
        let first = to_bytes(&spec, &params).unwrap();
        for _ in 0..8 {
            assert_eq!(to_bytes(&spec, &params).unwrap(), first);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save(&spec, &params, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert_eq!(from_bytes(&spec, 5, &first).unwrap(), params);
    }

    #[test]
    fn save_load_file_gives_identical_predictions() {
        let dir = tempfile::tempdir().unwrap();
        for spec in [
            ModelSpec::LogisticRegression,
            ModelSpec::Mlp {
                hidden: vec![16, 8],
            },
        ] {
            let (p, x) = trained(&spec, 13);
            let path = dir.path().join(format!("{}.safetensors", spec.name()));
            save(&spec, &p, &path).unwrap();
            // Saving twice overwrites.
            save(&spec, &p, &path).unwrap();
            let back = load(&spec, 13, &path).unwrap();
            assert_eq!(back, p);
            assert_eq!(
                predict(&spec, &back, &x, 13).unwrap(),
                predict(&spec, &p, &x, 13).unwrap()
            );
        }
    }

    #[test]
    fn bytes_round_trip_and_names_are_layout_names() {
        let spec = ModelSpec::Mlp { hidden: vec![4] };
        let (p, _) = trained(&spec, 5);
        let bytes = to_bytes(&spec, &p).unwrap();
        assert_eq!(from_bytes(&spec, 5, &bytes).unwrap(), p);
        // The safetensors header (JSON after an 8-byte length) names the layout's tensors.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        for e in &p.layout.entries {
            assert!(header.contains(&format!("\"{}\"", e.name)), "{header}");
        }
        assert!(header.contains("fedcare.layout_digest"));
    }

    #[test]
    fn loading_wrong_model_or_garbage_fails() {
        let spec = ModelSpec::LogisticRegression;
        let p = init(&spec, 5, 0);
        let bytes = to_bytes(&spec, &p).unwrap();
        assert!(matches!(
            from_bytes(&spec, 6, &bytes),
            Err(ModelError::Store(_))
        ));
        let mlp = ModelSpec::Mlp { hidden: vec![4] };
        assert!(matches!(
            from_bytes(&mlp, 5, &bytes),
            Err(ModelError::Store(_))
        ));
        assert!(matches!(
            from_bytes(&spec, 5, b"not a model"),
            Err(ModelError::Store(_))
        ));
        assert!(matches!(
            from_bytes(&spec, 5, &bytes[..bytes.len() - 3]),
            Err(ModelError::Store(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(&spec, 5, &dir.path().join("missing")),
            Err(ModelError::Store(_))
        ));
        // Saving parameters under the wrong spec is refused.
        assert!(matches!(
            to_bytes(&mlp, &p),
            Err(ModelError::LayoutMismatch { .. })
        ));
    }
}
