//! Transport segments (`wire::tcp`): parsing never panics; whatever parses re-emits to a
//! segment that parses, and emitting is idempotent after that first normalisation (URG
//! dropped, ACK following the ack number, SACK blocks trimmed to the option space).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_stack::wire::tcp::{Packet, TcpRepr};

fn emit(repr: &TcpRepr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    buf
}

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = TcpRepr::parse_bytes(data) else { return };
    let once = emit(&repr);
    let again = TcpRepr::parse_bytes(&once).expect("an emitted segment parses");
    assert_eq!(again.payload, repr.payload);
    assert_eq!(again.seq_number, repr.seq_number);
    assert_eq!(emit(&again), once, "emit is idempotent after one round");
});
