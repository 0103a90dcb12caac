//! The on-disk record envelope: the only module that knows the byte layout of
//! a stored record, and the only one that touches `bincode`.
//!
//! Layout (all integers little endian):
//!
//! ```text
//! offset  size  field
//! 0       2     magic "DS"
//! 2       1     format version (currently 1)
//! 3       8     epoch      (fencing token, +1 on every lease acquisition)
//! 11      8     revision   (+1 on every write)
//! 19      4     body length
//! 23      8     seahash of bytes 2..23 and the body (version, epoch,
//!               revision, length and body: a flipped bit anywhere but
//!               the magic is detected)
//! 31      ..    body: bincode (varint, size-limited) of `BodyV1`
//! ```
//!
//! The fixed header lets a backend check a compare-and-swap precondition
//! (epoch, revision) without decoding the body, and lets a torn or corrupt
//! record be detected before anything trusts it. The document and metadata
//! inside the body are JSON bytes: self-describing, so migrations can read
//! shapes that no longer deserialize into the application's type.
//!
//! Format versions and what a backend must guarantee: `docs/design.md`.
//!
//! Must not: know about actors, leases policy, or the queue.

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

const MAGIC: [u8; 2] = *b"DS";
/// The envelope version this build writes.
pub const FORMAT_VERSION: u8 = 1;

// Header offsets, each from the one before it (redb's style): the layout
// table above, as code.
const VERSION_AT: usize = MAGIC.len();
const EPOCH_AT: usize = VERSION_AT + 1;
const REVISION_AT: usize = EPOCH_AT + 8;
const BODY_LEN_AT: usize = REVISION_AT + 8;
const CHECKSUM_AT: usize = BODY_LEN_AT + 4;
/// Size of the fixed header in front of the body.
pub const HEADER_LEN: usize = CHECKSUM_AT + 8;
const _: () = assert!(HEADER_LEN == 31, "format version 1's header is 31 bytes");
/// Upper bound for a decoded body; protects the decoder from hostile lengths.
pub const MAX_BODY_LEN: u64 = 64 * 1024 * 1024;

/// The part of a record a backend may read to check a precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// The record's lease epoch (fencing token).
    pub epoch: u64,
    /// The record's revision, incremented by every write.
    pub revision: u64,
}

impl RecordHeader {
    /// Reads the header of an encoded record without decoding the body.
    /// `None` when the bytes do not start with a valid header.
    pub fn peek(bytes: &[u8]) -> Option<RecordHeader> {
        if bytes.len() < HEADER_LEN || bytes[..VERSION_AT] != MAGIC {
            return None;
        }
        Some(RecordHeader {
            epoch: u64::from_le_bytes(bytes[EPOCH_AT..REVISION_AT].try_into().ok()?),
            revision: u64::from_le_bytes(bytes[REVISION_AT..BODY_LEN_AT].try_into().ok()?),
        })
    }
}

/// Who holds the lease recorded in a record, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The owner id of the holding `Datastorer` instance.
    pub owner: String,
    /// Milliseconds since the Unix epoch after which the lease may be taken.
    pub expires_at_ms: u64,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fencing epoch and revision.
    pub header: RecordHeader,
    /// The version of the application's data schema (number of migrations applied).
    pub data_version: u32,
    /// The document, as JSON bytes.
    pub data: Vec<u8>,
    /// Metadata stored beside the document, as JSON bytes.
    pub metadata: Vec<u8>,
    /// User ids associated with the key (GDPR-style ownership).
    pub user_ids: Vec<String>,
    /// The current lease, if any.
    pub lease: Option<LeaseHolder>,
    /// When the record was first written (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When the record was last written (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct BodyV1 {
    data_version: u32,
    #[serde(with = "raw_bytes")]
    data: Vec<u8>,
    #[serde(with = "raw_bytes")]
    metadata: Vec<u8>,
    user_ids: Vec<String>,
    lease: Option<LeaseHolder>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

/// Borrowed twin of `BodyV1` for encoding without copying; every field has
/// the same serde shape, so the bytes are identical.
#[derive(Serialize)]
struct BodyRef<'a> {
    data_version: u32,
    #[serde(serialize_with = "raw_bytes::serialize")]
    data: &'a [u8],
    #[serde(serialize_with = "raw_bytes::serialize")]
    metadata: &'a [u8],
    user_ids: &'a [String],
    lease: Option<LeaseRef<'a>>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

/// Borrowed twin of [`LeaseHolder`] (same serde shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct LeaseRef<'a> {
    pub owner: &'a str,
    pub expires_at_ms: u64,
}

/// A record to encode whose parts are borrowed: a save encodes the
/// session's document, metadata and user ids where they live, instead of
/// copying them into a [`Record`] first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub header: RecordHeader,
    pub data_version: u32,
    pub data: &'a [u8],
    pub metadata: &'a [u8],
    pub user_ids: &'a [String],
    pub lease: Option<LeaseRef<'a>>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// Byte vectors as serde "bytes": bincode writes a length and the raw bytes,
/// exactly as for a sequence of `u8`, but with one copy instead of a call
/// per byte. (The golden-bytes test pins that the format is unchanged.)
mod raw_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// What a backend may index about a record without decoding its document:
/// the header, the lease and the user ids. Derived from the record bytes,
/// never stored apart from them as the truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordIndex {
    /// Epoch and revision.
    pub header: RecordHeader,
    /// Owner id of the lease holder, if the record is leased.
    pub lease_owner: Option<String>,
    /// When the lease lapses (0 when there is no lease).
    pub lease_expires_ms: u64,
    /// The record's user ids.
    pub user_ids: Vec<String>,
}

/// Borrowing twin of `BodyV1` for [`RecordIndex::peek`]: the document and
/// metadata are borrowed, never copied.
#[derive(Deserialize)]
struct BodyIndex<'a> {
    #[allow(dead_code)]
    data_version: u32,
    #[allow(dead_code)]
    #[serde(borrow)]
    data: &'a [u8],
    #[allow(dead_code)]
    #[serde(borrow)]
    metadata: &'a [u8],
    user_ids: Vec<String>,
    lease: Option<LeaseHolder>,
}

impl RecordIndex {
    /// Indexes a record; `None` when the bytes are not a record this build
    /// can decode (bad header, unknown version, torn, corrupt).
    pub fn peek(bytes: &[u8]) -> Option<RecordIndex> {
        let header = RecordHeader::peek(bytes)?;
        let body = verified_body(bytes).ok()?;
        // The trailing timestamps are not read: allow them to remain.
        let body: BodyIndex<'_> = bincode::DefaultOptions::new()
            .with_varint_encoding()
            .with_limit(MAX_BODY_LEN)
            .allow_trailing_bytes()
            .deserialize(body)
            .ok()?;
        let (lease_owner, lease_expires_ms) = match body.lease {
            Some(l) => (Some(l.owner), l.expires_at_ms),
            None => (None, 0),
        };
        Some(RecordIndex { header, lease_owner, lease_expires_ms, user_ids: body.user_ids })
    }
}

/// What a listing of versions shows of a record, read without copying its
/// document: the header, the document's size, the user ids and the times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    /// Epoch and revision.
    pub header: RecordHeader,
    /// The version of the application's data schema.
    pub data_version: u32,
    /// Bytes of the document's JSON (0 for a tombstone).
    pub data_len: usize,
    /// Bytes of the metadata's JSON.
    pub metadata_len: usize,
    /// The record's user ids.
    pub user_ids: Vec<String>,
    /// When the record was first written (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When this record was written (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// Borrowing twin of `BodyV1` for [`RecordSummary::peek`].
#[derive(Deserialize)]
struct BodySummary<'a> {
    data_version: u32,
    #[serde(borrow)]
    data: &'a [u8],
    #[serde(borrow)]
    metadata: &'a [u8],
    user_ids: Vec<String>,
    #[allow(dead_code)]
    lease: Option<LeaseHolder>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

impl RecordSummary {
    /// Summarizes a record; `None` when the bytes are not a record this
    /// build can decode.
    pub fn peek(bytes: &[u8]) -> Option<RecordSummary> {
        let header = RecordHeader::peek(bytes)?;
        let body: BodySummary<'_> = options().deserialize(verified_body(bytes).ok()?).ok()?;
        Some(RecordSummary {
            header,
            data_version: body.data_version,
            data_len: body.data.len(),
            metadata_len: body.metadata.len(),
            user_ids: body.user_ids,
            created_at_ms: body.created_at_ms,
            updated_at_ms: body.updated_at_ms,
        })
    }

    /// Whether the record is a tombstone (see `Record::tombstone`).
    pub fn is_tombstone(&self) -> bool {
        self.data_len == 0
    }
}

/// The body of a record after checking version, length and checksum.
fn verified_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if RecordHeader::peek(bytes).is_none() {
        return Err(DecodeError::NotARecord);
    }
    let version = bytes[VERSION_AT];
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownFormat(version));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[BODY_LEN_AT..CHECKSUM_AT]);
    let declared = u32::from_le_bytes(len) as usize;
    let body = &bytes[HEADER_LEN..];
    if body.len() != declared {
        return Err(DecodeError::Corrupt(format!("body is {} bytes, header says {declared}", body.len())));
    }
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&bytes[CHECKSUM_AT..HEADER_LEN]);
    if checksum(&bytes[VERSION_AT..CHECKSUM_AT], body) != u64::from_le_bytes(hash) {
        return Err(DecodeError::Corrupt("checksum mismatch".into()));
    }
    Ok(body)
}

/// Why a stored record could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header or without the magic bytes.
    #[error("not a datastorer record (bad magic or shorter than the {HEADER_LEN}-byte header)")]
    NotARecord,
    /// Written by a newer build.
    #[error("record format version {0} is newer than this build understands ({FORMAT_VERSION})")]
    UnknownFormat(u8),
    /// Body length or checksum do not match: a torn or corrupted write.
    #[error("record body is torn or corrupt: {0}")]
    Corrupt(String),
    /// The body does not decode.
    #[error("record body does not decode: {0}")]
    Body(String),
}

/// seahash over the header fields and the body, without copying them together.
fn checksum(header: &[u8], body: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = seahash::SeaHasher::new();
    h.write(header);
    h.write(body);
    h.finish()
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_varint_encoding().with_limit(MAX_BODY_LEN).reject_trailing_bytes()
}

impl Record {
    /// What a backend may index about this record (see [`RecordIndex`]).
    pub fn index(&self) -> RecordIndex {
        RecordIndex {
            header: self.header,
            lease_owner: self.lease.as_ref().map(|l| l.owner.clone()),
            lease_expires_ms: self.lease.as_ref().map_or(0, |l| l.expires_at_ms),
            user_ids: self.user_ids.clone(),
        }
    }

    /// Encodes the record, header first.
    pub fn encode(&self) -> Vec<u8> {
        RecordRef {
            header: self.header,
            data_version: self.data_version,
            data: &self.data,
            metadata: &self.metadata,
            user_ids: &self.user_ids,
            lease: self.lease.as_ref().map(|l| LeaseRef { owner: &l.owner, expires_at_ms: l.expires_at_ms }),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
        .encode()
    }
}

impl RecordRef<'_> {
    /// Encodes the record, header first (the layout in the module docs).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let body = BodyRef {
            data_version: self.data_version,
            data: self.data,
            metadata: self.metadata,
            user_ids: self.user_ids,
            lease: self.lease,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        };
        // Serializing plain integers, byte vectors and strings into a Vec cannot
        // fail; a failure here would be a bug in bincode itself.
        // One exact allocation and the body serialized in place: the document
        // is copied once (sizing walks the body without copying it).
        let body_len = options()
            .serialized_size(&body)
            .unwrap_or_else(|e| unreachable!("bincode failed on an in-memory body: {e}"))
            as usize;
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.header.epoch.to_le_bytes());
        out.extend_from_slice(&self.header.revision.to_le_bytes());
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 8]); // checksum, filled in below
        options()
            .serialize_into(&mut out, &body)
            .unwrap_or_else(|e| unreachable!("bincode failed on an in-memory body: {e}"));
        debug_assert_eq!(out.len(), HEADER_LEN + body_len);
        let checksum = checksum(&out[VERSION_AT..CHECKSUM_AT], &out[HEADER_LEN..]);
        out[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
        out
    }
}

impl Record {
    /// Decodes a record; never panics on arbitrary input.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let header = RecordHeader::peek(bytes).ok_or(DecodeError::NotARecord)?;
        let body = verified_body(bytes)?;
        let body: BodyV1 = options().deserialize(body).map_err(|e| DecodeError::Body(e.to_string()))?;
        Ok(Record {
            header,
            data_version: body.data_version,
            data: body.data,
            metadata: body.metadata,
            user_ids: body.user_ids,
            lease: body.lease,
            created_at_ms: body.created_at_ms,
            updated_at_ms: body.updated_at_ms,
        })
    }
}
