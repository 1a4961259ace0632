//! SAL datagrams: parsing never panics; whatever parses re-emits to a header that parses
//! back to the same value; the trace printer, the MAC input and a router hop never panic.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use serval_stack::wire::sal::{Packet, PrettyPrint, SalRepr, forward};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Random bytes almost never carry a valid checksum; fix it up so the extension walker
    // and the per-packet rules are explored too.
    if let Ok(mut packet) = Packet::new_checked(data.to_vec()) {
        packet.fill_checksum();
        check(&packet.into_inner());
    }
});

fn check(data: &[u8]) {
    let _ = PrettyPrint(data).to_string();
    let from: SocketAddr = "192.0.2.1:3333".parse().unwrap();
    let here: SocketAddr = "[2001:db8::1]:54325".parse().unwrap();
    let mut out = [0u8; 2048];
    let _ = forward(data, from, here, &mut out);

    let Ok(parsed) = SalRepr::parse_datagram(data) else {
        return;
    };
    let repr = parsed.repr;
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = SalRepr::parse_datagram(&buf).expect("an emitted header parses");
    assert_eq!(again.repr, repr);
    assert_eq!(again.header_len, repr.buffer_len());
    assert!(again.payload.is_empty());
    let _ = repr.with_mac_input(|input| input.len());
}
