//! Random values of any serde type, from a seed: a `Deserializer` that makes up its input.
//!
//! The property tests of `images-format` and `proto` need random records of every kind. Writing
//! a generator per type would have to follow every change of every record; driving each type's
//! own derived `Deserialize` with invented data follows them by itself, and reaches every field,
//! every enum variant (`deserialize_enum` is told how many there are) and every option. No
//! dependency: a xorshift generator, seeded, so a failure is repeated by its seed.
//!
//! Shared by the two crates' tests (`proto/tests` includes this file by path).
#![allow(dead_code)]

use serde::de::value::{Error, U32Deserializer};
use serde::de::{
    DeserializeOwned, DeserializeSeed, EnumAccess, Error as _, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};

/// xorshift64*: fast, seeded, good enough to pick test values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Never 0 (xorshift stays at 0); spread small seeds.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// An integer of `bits` bits, biased to the values that break encoders: 0, 1, the
    /// extremes, the varint boundaries (127/128, 16383/16384, ...), small ones, any.
    fn int_bits(&mut self, bits: u32) -> u64 {
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        let v = match self.below(9) {
            0 => 0,
            1 => 1,
            2 => mask,
            3 => mask >> 1,
            4 => {
                let k = 7 * (1 + self.below(9) as u32);
                let b = 1u64.checked_shl(k).unwrap_or(0);
                b.wrapping_sub(self.below(2))
            }
            5 => self.below(300),
            6 => mask ^ (mask >> 1),
            _ => self.next(),
        };
        v & mask
    }
}

/// Most elements in a sequence, bytes in a blob, chars in a string (occasionally exceeded for
/// blobs, to get multi-byte varint lengths).
const MAX_LEN: u64 = 5;
const MAX_DEPTH: u32 = 12;

/// The deserializer that invents values.
pub struct RandomDe<'a> {
    rng: &'a mut Rng,
    depth: u32,
}

/// A random `T` from `rng`.
pub fn random<T: DeserializeOwned>(rng: &mut Rng) -> T {
    T::deserialize(RandomDe { rng, depth: 0 })
        .unwrap_or_else(|e| panic!("cannot invent a {}: {e}", std::any::type_name::<T>()))
}

impl<'a> RandomDe<'a> {
    fn child(&mut self) -> RandomDe<'_> {
        RandomDe {
            rng: self.rng,
            depth: self.depth + 1,
        }
    }

    fn len(&mut self) -> usize {
        if self.depth >= MAX_DEPTH {
            0
        } else {
            self.rng.below(MAX_LEN + 1) as usize
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = if self.rng.below(10) == 0 {
            // Past 127 and 16383: two- and three-byte length prefixes.
            [128, 300, 16_400][self.rng.below(3) as usize]
        } else {
            self.rng.below(40) as usize
        };
        (0..n).map(|_| self.rng.next() as u8).collect()
    }

    fn string(&mut self) -> String {
        let n = self.rng.below(12);
        (0..n)
            .map(|_| match self.rng.below(4) {
                0 => char::from_u32(0x80 + self.rng.below(0x2000) as u32).unwrap_or('x'),
                1 => ['/', '.', '\0', '\n', 'é', '\u{10ffff}'][self.rng.below(6) as usize],
                _ => (b' ' + self.rng.below(95) as u8) as char,
            })
            .collect()
    }

    fn float(&mut self) -> f64 {
        // Finite values only: NaN is not equal to itself, and no record gains from it.
        match self.rng.below(4) {
            0 => 0.0,
            1 => -1.5,
            2 => f64::MAX,
            _ => (self.rng.next() >> 11) as f64 / 1e3,
        }
    }
}

macro_rules! ints {
    ($($method:ident $visit:ident $t:ty, $bits:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            // `as` keeps the low bits: for signed types the all-ones mask is -1, half of it
            // the maximum, and the top bit alone the minimum.
            v.$visit(self.rng.int_bits($bits) as $t)
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for RandomDe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Error> {
        Err(Error::custom(
            "self-describing formats are not used by the images: no deserialize_any",
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(self.rng.coin())
    }

    ints! {
        deserialize_u8 visit_u8 u8, 8;
        deserialize_u16 visit_u16 u16, 16;
        deserialize_u32 visit_u32 u32, 32;
        deserialize_u64 visit_u64 u64, 64;
        deserialize_i8 visit_i8 i8, 8;
        deserialize_i16 visit_i16 i16, 16;
        deserialize_i32 visit_i32 i32, 32;
        deserialize_i64 visit_i64 i64, 64;
    }

    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let hi = self.rng.int_bits(64) as u128;
        v.visit_u128(hi << 64 | self.rng.int_bits(64) as u128)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let hi = self.rng.int_bits(64) as u128;
        v.visit_i128((hi << 64 | self.rng.int_bits(64) as u128) as i128)
    }

    fn deserialize_f32<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_f32(self.float() as f32)
    }

    fn deserialize_f64<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(self.float())
    }

    fn deserialize_char<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_char(self.string().chars().next().unwrap_or('c'))
    }

    fn deserialize_str<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.string())
    }

    fn deserialize_string<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_string(self.string())
    }

    fn deserialize_bytes<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_byte_buf(self.bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        v.visit_byte_buf(self.bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        if self.depth >= MAX_DEPTH || self.rng.coin() {
            v.visit_none()
        } else {
            v.visit_some(self.child())
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self.child())
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        let left = self.len();
        v.visit_seq(Elements { de: self, left })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Elements {
            de: self,
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Elements {
            de: self,
            left: len,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, Error> {
        let left = self.len();
        v.visit_map(Elements { de: self, left })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Elements {
            de: self,
            left: fields.len(),
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        let index = self.rng.below(variants.len() as u64) as u32;
        v.visit_enum(Variant { de: self, index })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Error> {
        Err(Error::custom("identifiers are not invented"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Elements<'a> {
    de: RandomDe<'a>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.de.child()).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> MapAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.de.child()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.de.child())
    }
}

/// An enum: the variant picked at random, then its contents.
struct Variant<'a> {
    de: RandomDe<'a>,
    index: u32,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = Error;
    type Variant = RandomDe<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, RandomDe<'a>), Error> {
        let index: U32Deserializer<Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self.de))
    }
}

impl<'de> VariantAccess<'de> for RandomDe<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.child())
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        v.visit_seq(Elements {
            de: self,
            left: len,
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_seq(Elements {
            de: self,
            left: fields.len(),
        })
    }
}
