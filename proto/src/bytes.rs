//! `#[serde(with = "crate::bytes")]` for `Vec<u8>` fields that carry data (pages, file
//! pieces): postcard writes them exactly as it writes any `Vec<u8>` (a varint length, then
//! the bytes), but as one copy instead of one call per byte, which matters for 4 MiB batches.

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
        // Bounded by the frame's payload cap, checked before decoding.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: u8,
        data: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast {
        a: u8,
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn same_bytes_on_the_wire_as_a_plain_vec() {
        for len in [0usize, 1, 127, 128, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let plain = postcard::to_stdvec(&Plain {
                a: 3,
                data: data.clone(),
            })
            .unwrap();
            let fast = postcard::to_stdvec(&Fast {
                a: 3,
                data: data.clone(),
            })
            .unwrap();
            assert_eq!(plain, fast);
            let back: Fast = postcard::from_bytes(&plain).unwrap();
            assert_eq!(back.data, data);
            let back: Plain = postcard::from_bytes(&fast).unwrap();
            assert_eq!(back.data, data);
        }
    }
}
