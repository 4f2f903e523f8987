//! What every party of a round agrees on before it starts.

use crate::crypto::{KEY_LEN, label, sha256};
use crate::error::SecAggError;
use crate::graph::{Graph, Params, graph_seed};

/// One site of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteEntry {
    /// Dense index 0..n; equal to the entry's position in [`RoundSetup::sites`].
    pub index: u32,
    /// Human-readable name (for logs); bound into the setup digest.
    pub name: String,
    /// The site's long-term Ed25519 public key (32 bytes).
    pub identity_public_key: Vec<u8>,
}

/// The round: its id, its sites and its parameters. Every site and the coordinator must hold
/// the same setup; each site signs its keys over [`RoundSetup::digest`], so sites holding
/// different setups refuse each other's keys.
///
/// Rules checked by [`RoundSetup::validate`]: entries are listed in index order 0..n; identity
/// keys are 32 bytes and strictly increasing (a canonical order, so the coordinator cannot
/// choose who sits where in the graph, and no identity appears twice); the parameters are
/// valid for n; a regular graph's seed is [`graph_seed`]`(round_id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundSetup {
    /// SHA-256 of the job id and round number, supplied by the caller.
    pub round_id: [u8; 32],
    pub sites: Vec<SiteEntry>,
    pub params: Params,
}

impl RoundSetup {
    /// Builds a setup from `(name, identity public key)` pairs in any order: sorts them into
    /// the canonical order and assigns indices. Read a site's index back from `sites`.
    pub fn new(
        round_id: [u8; 32],
        mut sites: Vec<(String, Vec<u8>)>,
        params: Params,
    ) -> Result<RoundSetup, SecAggError> {
        sites.sort_by(|a, b| a.1.cmp(&b.1));
        let sites = sites
            .into_iter()
            .enumerate()
            .map(|(i, (name, identity_public_key))| SiteEntry {
                index: i as u32,
                name,
                identity_public_key,
            })
            .collect();
        let s = RoundSetup {
            round_id,
            sites,
            params,
        };
        s.validate()?;
        Ok(s)
    }

    pub fn n(&self) -> usize {
        self.sites.len()
    }

    /// Index of the site with this identity key, if it is in the round.
    pub fn index_of(&self, identity_public_key: &[u8]) -> Option<u32> {
        self.sites
            .iter()
            .find(|s| s.identity_public_key == identity_public_key)
            .map(|s| s.index)
    }

    pub fn validate(&self) -> Result<(), SecAggError> {
        let n = self.sites.len();
        self.params.validate(n)?;
        for (i, s) in self.sites.iter().enumerate() {
            if s.index as usize != i {
                return Err(SecAggError::InvalidSetup(format!(
                    "entry {i} has index {}",
                    s.index
                )));
            }
            if s.identity_public_key.len() != KEY_LEN {
                return Err(SecAggError::InvalidSetup(format!(
                    "site {i}'s identity key is not 32 bytes"
                )));
            }
            if s.name.len() > 1024 {
                return Err(SecAggError::InvalidSetup(format!(
                    "site {i}'s name is longer than 1024 bytes"
                )));
            }
            if i > 0 && self.sites[i - 1].identity_public_key >= s.identity_public_key {
                return Err(SecAggError::InvalidSetup(format!(
                    "identity keys must be strictly increasing (canonical order); entry {i} is not"
                )));
            }
        }
        if let Graph::Regular { seed, .. } = &self.params.graph
            && *seed != graph_seed(&self.round_id)
        {
            return Err(SecAggError::InvalidSetup(
                "the graph seed is not graph_seed(round_id)".into(),
            ));
        }
        Ok(())
    }

    /// SHA-256 over a canonical encoding of the whole setup.
    pub fn digest(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(64 + self.sites.len() * 80);
        buf.extend_from_slice(label::SETUP);
        buf.extend_from_slice(&self.round_id);
        buf.extend_from_slice(&(self.sites.len() as u32).to_be_bytes());
        for s in &self.sites {
            buf.extend_from_slice(&s.index.to_be_bytes());
            buf.extend_from_slice(&(s.name.len() as u32).to_be_bytes());
            buf.extend_from_slice(s.name.as_bytes());
            buf.extend_from_slice(&(s.identity_public_key.len() as u32).to_be_bytes());
            buf.extend_from_slice(&s.identity_public_key);
        }
        let p = &self.params;
        buf.extend_from_slice(&p.bits.to_be_bytes());
        buf.extend_from_slice(&(p.dim as u64).to_be_bytes());
        buf.extend_from_slice(&(p.threshold as u64).to_be_bytes());
        match &p.graph {
            Graph::Complete => buf.push(0),
            Graph::Regular { k, seed } => {
                buf.push(1);
                buf.extend_from_slice(&k.to_be_bytes());
                buf.extend_from_slice(seed);
            }
        }
        sha256(&[&buf])
    }
}
