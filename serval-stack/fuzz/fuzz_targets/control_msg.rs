//! Control-plane messages: parsing never panics; whatever parses re-emits to a message that
//! parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_stack::wire::control_msg::{ControlMsg, Packet};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Make the length field agree with the input so the body parsers are reached.
    if let Ok(len) = u16::try_from(data.len())
        && data.len() >= 8
    {
        let mut fixed = data.to_vec();
        fixed[2..4].copy_from_slice(&len.to_be_bytes());
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let Ok(msg) = ControlMsg::parse(data) else {
        return;
    };
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut Packet::new_unchecked(&mut buf[..]));
    let again = ControlMsg::parse(&buf).expect("an emitted message parses");
    assert_eq!(again, msg);
    let _ = msg.with_mac_input(|input| input.len());
}
