//! The only place slab keys become `mio::Token`s and back.
//!
//! A server owns the token range `base .. base + TOKEN_SPAN`, where `base` is
//! given by the host. Inside the range a token is
//! `base + (generation << SLOT_BITS | slot)`:
//!
//! * slots `0 .. MAX_LISTENERS` are listeners with generation 0, and the
//!   UDP sockets with generation 1 (a listener slot has no generations of
//!   its own, so UDP fits in the range without taking a connection slot);
//! * slot `MAX_LISTENERS + key` is the connection at slab `key`.
//!
//! The generation changes each time a slab key is reused, so an event that
//! was queued for a connection closed earlier in the same batch names an old
//! generation and is ignored instead of being applied to the newcomer.

use mio::Token;

const SLOT_BITS: u32 = 24;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const GENERATION_BITS: u32 = 16;
/// The generation that marks a listener slot as a UDP socket's.
const UDP_GENERATION: usize = 1;

/// How many tokens one server uses, starting at its base token.
///
/// A host that runs several servers in one `Poll` gives each a base at least
/// this far apart (see [`crate::EchoServer::new`]).
pub const TOKEN_SPAN: usize = 1 << (SLOT_BITS + GENERATION_BITS);

/// Most listeners one server can hold.
pub const MAX_LISTENERS: usize = 16;

/// Most connections one server can hold (slab keys that fit in a slot).
pub const MAX_CONNECTIONS: usize = SLOT_MASK + 1 - MAX_LISTENERS;

/// What a token of ours points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Listener(usize),
    Udp(usize),
    Connection { key: usize, generation: u16 },
}

/// Converts between our tokens and listener indexes or slab keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tokens {
    base: usize,
}

impl Tokens {
    /// `None` if the range `base .. base + TOKEN_SPAN` does not fit in usize.
    pub(crate) fn new(base: Token) -> Option<Tokens> {
        base.0.checked_add(TOKEN_SPAN)?;
        Some(Tokens { base: base.0 })
    }

    #[inline]
    pub(crate) fn owns(&self, token: Token) -> bool {
        self.local(token).is_some()
    }

    // The token's offset in our range, if it is in it: one subtraction and
    // one comparison (`base <= t < base + SPAN` took two comparisons).
    #[inline]
    fn local(&self, token: Token) -> Option<usize> {
        let local = token.0.wrapping_sub(self.base);
        (local < TOKEN_SPAN).then_some(local)
    }

    pub(crate) fn listener(&self, index: usize) -> Token {
        debug_assert!(index < MAX_LISTENERS);
        Token(self.base + index)
    }

    pub(crate) fn udp(&self, index: usize) -> Token {
        debug_assert!(index < MAX_LISTENERS);
        Token(self.base + (UDP_GENERATION << SLOT_BITS | index))
    }

    pub(crate) fn connection(&self, key: usize, generation: u16) -> Token {
        debug_assert!(key < MAX_CONNECTIONS);
        let local = (generation as usize) << SLOT_BITS | (key + MAX_LISTENERS);
        Token(self.base + local)
    }

    #[inline]
    pub(crate) fn decode(&self, token: Token) -> Option<Target> {
        let local = self.local(token)?;
        let slot = local & SLOT_MASK;
        let generation = (local >> SLOT_BITS) as u16;
        if slot < MAX_LISTENERS {
            return match generation as usize {
                0 => Some(Target::Listener(slot)),
                UDP_GENERATION => Some(Target::Udp(slot)),
                _ => None,
            };
        }
        Some(Target::Connection {
            key: slot - MAX_LISTENERS,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_listeners_and_connections() {
        let tokens = Tokens::new(Token(1000)).unwrap();
        assert_eq!(tokens.decode(tokens.listener(3)), Some(Target::Listener(3)));
        assert_eq!(tokens.decode(tokens.udp(3)), Some(Target::Udp(3)));
        assert_ne!(tokens.udp(0), tokens.listener(0));
        assert!(tokens.owns(tokens.udp(MAX_LISTENERS - 1)));
        // Other generations of a listener slot name nothing.
        assert_eq!(tokens.decode(Token(1000 + (2 << SLOT_BITS))), None);
        let t = tokens.connection(12345, 777);
        assert_eq!(
            tokens.decode(t),
            Some(Target::Connection {
                key: 12345,
                generation: 777
            })
        );
        assert!(tokens.owns(t));
        assert!(!tokens.owns(Token(999)));
        assert!(!tokens.owns(Token(1000 + TOKEN_SPAN)));
        assert_eq!(tokens.decode(Token(5)), None);
    }

    #[test]
    fn same_key_new_generation_is_a_different_token() {
        let tokens = Tokens::new(Token(0)).unwrap();
        assert_ne!(tokens.connection(0, 1), tokens.connection(0, 2));
        let last = tokens.connection(MAX_CONNECTIONS - 1, u16::MAX);
        assert!(tokens.owns(last));
    }

    #[test]
    fn rejects_a_base_too_close_to_the_end() {
        assert!(Tokens::new(Token(usize::MAX - 10)).is_none());
    }
}
