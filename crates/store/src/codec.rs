//! Byte layouts of stored values and history entries. Small and explicit so the on-disk format is
//! visible in one place: little-endian integers, length-prefixed byte strings.

use crate::{Event, EventKind, KeyValue, Revision};
use std::sync::Arc;

/// A stored object: create revision, mod revision, then the value bytes.
pub fn encode_value(create: Revision, modified: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a stored object for `key`.
pub fn decode_value(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    if bytes.len() < 16 {
        return None;
    }
    Some(KeyValue {
        key: key.to_string(),
        create_revision: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
        mod_revision: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
        value: Arc::from(&bytes[16..]),
    })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The events of one revision, as one history record.
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        put_bytes(&mut out, e.kv.key.as_bytes());
        out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        put_bytes(&mut out, &e.kv.value);
        match &e.prev {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.create_revision.to_le_bytes());
                out.extend_from_slice(&p.mod_revision.to_le_bytes());
                put_bytes(&mut out, &p.value);
            }
            None => out.push(0),
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(slice)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

/// Decodes one history record committed at `revision`.
pub fn decode_events(revision: Revision, bytes: &[u8]) -> Option<Vec<Event>> {
    let mut r = Reader { bytes, pos: 0 };
    let mut events = Vec::new();
    while r.pos < bytes.len() {
        let kind = match r.u8()? {
            0 => EventKind::Put,
            _ => EventKind::Delete,
        };
        let key = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let create_revision = r.u64()?;
        let value: Arc<[u8]> = Arc::from(r.bytes()?);
        let prev = match r.u8()? {
            1 => Some(KeyValue {
                key: key.clone(),
                create_revision: r.u64()?,
                mod_revision: r.u64()?,
                value: Arc::from(r.bytes()?),
            }),
            _ => None,
        };
        events.push(Event {
            kind,
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: revision,
            },
            prev,
        });
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let kv = |k: &str, v: &[u8], c, m| KeyValue {
            key: k.into(),
            value: Arc::from(v),
            create_revision: c,
            mod_revision: m,
        };
        let events = vec![
            Event {
                kind: EventKind::Put,
                kv: kv("/a", b"1", 3, 7),
                prev: Some(kv("/a", b"0", 3, 3)),
            },
            Event {
                kind: EventKind::Delete,
                kv: kv("/b", b"x", 2, 7),
                prev: None,
            },
        ];
        assert_eq!(decode_events(7, &encode_events(&events)).unwrap(), events);
        assert_eq!(
            decode_value("/k", &encode_value(1, 2, b"v")).unwrap(),
            kv("/k", b"v", 1, 2)
        );
    }
}
