//! The journal: the endpoint change in progress, next to the state file.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{EndpointRecord, Locked, StateError};

/// The journal of the endpoint change in progress (see [`Intent`]).
pub(crate) const INTENT_FILE: &str = "intent.json";

/// The endpoint change in progress, written before its first kernel change and
/// removed after its commit. Whoever takes the lock next and finds it knows that a
/// command died halfway, and what it was doing: an `add` is rolled back (nothing of
/// it was committed), a `del` is finished (the pod may already have lost its
/// interface, so there is no going back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Intent {
    Add(PlannedEndpoint),
    Del(EndpointRecord),
}

/// What an `add` in progress may have made: everything is found by these names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlannedEndpoint {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub(crate) ip6: Option<Ipv6Addr>,
    pub(crate) id: u32,
    pub(crate) host_veth: String,
    pub(crate) temp_peer: String,
    /// The add creates the namespace `name` (it did not exist when the add began,
    /// under the lock), so a rollback deletes it.
    pub(crate) create_netns: bool,
}

impl Locked {
    pub(super) fn intent_path(&self) -> PathBuf {
        self.path.with_file_name(INTENT_FILE)
    }

    /// The journal left by a command that died halfway, if any.
    pub(crate) fn pending(&self) -> Result<Option<Intent>, StateError> {
        let path = self.intent_path();
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|source| StateError::CorruptIntent { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Journals `intent` before its first kernel change. Written atomically but not
    /// fsynced: it only has to survive the death of the process (the page cache
    /// does); a power loss takes the kernel objects it describes with it.
    pub(crate) fn begin(&self, intent: &Intent) -> Result<(), StateError> {
        let path = self.intent_path();
        let tmp = path.with_extension("json.tmp");
        let werr = |source| StateError::Write {
            path: tmp.clone(),
            source,
        };
        let text = serde_json::to_vec(intent).map_err(|e| werr(e.into()))?;
        fs::write(&tmp, text).map_err(werr)?;
        fs::rename(&tmp, &path).map_err(|source| StateError::Write { path, source })
    }

    /// Clears the journal once the change is committed or undone.
    pub(crate) fn end(&self) -> Result<(), StateError> {
        let path = self.intent_path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }
}
