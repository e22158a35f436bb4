//! Event ids: 128-bit, unique and time-ordered, in the ULID layout.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Crockford's base32 alphabet, as ULID text uses it.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of the text form.
const TEXT_LEN: usize = 26;
const RANDOM_BITS: u32 = 80;
const RANDOM_MASK: u128 = (1 << RANDOM_BITS) - 1;

/// A unique, time-ordered event id: 48-bit Unix milliseconds then 80 bits that are random
/// per millisecond and incremented within it. Its byte and text orders are time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    /// Wraps a raw 128-bit value.
    #[must_use]
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The raw 128-bit value.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The 16 big-endian bytes used on the wire.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Reads the 16 big-endian wire bytes; `None` when the slice is not 16 bytes long.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 16] = bytes.try_into().ok()?;
        Some(Self(u128::from_be_bytes(array)))
    }

    /// The millisecond timestamp the id was minted in.
    #[must_use]
    pub const fn unix_millis(self) -> u64 {
        (self.0 >> RANDOM_BITS) as u64
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; TEXT_LEN];
        for (i, slot) in text.iter_mut().enumerate() {
            let shift = 5 * (TEXT_LEN - 1 - i);
            *slot = ALPHABET[((self.0 >> shift) & 0x1f) as usize];
        }
        // The alphabet is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Why a text id could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseIdError {
    /// The text is not 26 characters long.
    #[error("an event id has 26 characters, got {0}")]
    Length(usize),
    /// A character is outside Crockford's base32 alphabet.
    #[error("invalid character {0:?} in event id")]
    Character(char),
    /// The first character makes the value wider than 128 bits.
    #[error("event id overflows 128 bits")]
    Overflow,
}

impl FromStr for EventId {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != TEXT_LEN {
            return Err(ParseIdError::Length(text.chars().count()));
        }
        let mut value: u128 = 0;
        for (i, c) in text.chars().enumerate() {
            let digit = decode_digit(c).ok_or(ParseIdError::Character(c))?;
            // 26 digits carry 130 bits; the first may only use the low 3.
            if i == 0 && digit > 7 {
                return Err(ParseIdError::Overflow);
            }
            value = (value << 5) | u128::from(digit);
        }
        Ok(Self(value))
    }
}

fn decode_digit(c: char) -> Option<u8> {
    let upper = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| char::from(a) == upper)
        .map(|p| p as u8)
}

/// Mints ids for one producer. Ids from one generator strictly increase; ids from
/// different generators collide only if they draw the same 80 random bits in the same
/// millisecond.
#[derive(Debug)]
pub struct IdGenerator {
    last_millis: u64,
    last_random: u128,
    rng: fastrand::Rng,
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl IdGenerator {
    /// A generator seeded from the process's entropy.
    #[must_use]
    pub fn new() -> Self {
        Self {
            last_millis: 0,
            last_random: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The next id, stamped with the current time.
    pub fn next_id(&mut self) -> EventId {
        self.next_at(unix_millis_now())
    }

    /// The next id for a given millisecond; a clock that steps back keeps the last
    /// millisecond so ids still increase.
    pub fn next_at(&mut self, millis: u64) -> EventId {
        if millis > self.last_millis {
            self.last_millis = millis;
            // Leave headroom so increments within the millisecond rarely carry.
            self.last_random = u128::from(self.rng.u64(..)) << 16 | u128::from(self.rng.u16(..));
            self.last_random &= RANDOM_MASK >> 1;
        } else {
            self.last_random += 1;
            if self.last_random > RANDOM_MASK {
                self.last_millis += 1;
                self.last_random = 0;
            }
        }
        EventId((u128::from(self.last_millis) << RANDOM_BITS) | self.last_random)
    }
}

/// Nanoseconds since the Unix epoch, now.
#[must_use]
pub fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_millis_now() -> u64 {
    unix_nanos_now() / 1_000_000
}

/// FNV-1a over `parts`, each followed by a separator so ("ab", "c") and ("a", "bc") differ,
/// then mixed (`SplitMix64` finaliser) so the high bits are as good as the low ones.
#[must_use]
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.iter().chain(&[0xff]) {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_sorts_like_the_value() {
        let mut generator = IdGenerator::new();
        let ids: Vec<EventId> = (0..1000).map(|_| generator.next_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "ids must strictly increase: {pair:?}");
            assert!(
                pair[0].to_string() < pair[1].to_string(),
                "text must sort like ids"
            );
        }
        for id in &ids {
            let text = id.to_string();
            assert_eq!(text.len(), 26);
            assert_eq!(text.parse::<EventId>(), Ok(*id));
        }
    }

    #[test]
    fn known_value_encodes_to_known_text() {
        assert_eq!(EventId(0).to_string(), "00000000000000000000000000");
        assert_eq!(EventId(u128::MAX).to_string(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        assert_eq!("7zzzzzzzzzzzzzzzzzzzzzzzzz".parse(), Ok(EventId(u128::MAX)));
    }

    #[test]
    fn bad_text_is_rejected_with_the_reason() {
        assert_eq!("abc".parse::<EventId>(), Err(ParseIdError::Length(3)));
        assert_eq!(
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<EventId>(),
            Err(ParseIdError::Overflow)
        );
        assert_eq!(
            "0000000000000000000000000U".parse::<EventId>(),
            Err(ParseIdError::Character('U'))
        );
    }

    #[test]
    fn clock_stepping_back_keeps_ids_increasing() {
        let mut generator = IdGenerator::new();
        let a = generator.next_at(5_000);
        let b = generator.next_at(4_000);
        assert!(b > a);
        assert_eq!(b.unix_millis(), 5_000);
    }

    #[test]
    fn carry_out_of_the_random_part_moves_to_the_next_millisecond() {
        let mut generator = IdGenerator::new();
        generator.next_at(10);
        generator.last_random = RANDOM_MASK;
        let id = generator.next_at(10);
        assert_eq!(id.unix_millis(), 11);
    }
}
