//! The PROXY v2 preamble a server translator reads at the start of every Serval flow
//! (`client_address::scan`, the sans-IO half of `client_address::read`).
//!
//! Invariants: no panic; a parsed preamble is no longer than the input nor than
//! 16 + MAX_PREAMBLE; "need more" never asks for more than that nor for fewer bytes than
//! given; and a preamble re-emitted from the parsed addresses parses back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use translator::client_address::{MAX_PREAMBLE, Scan, preamble, scan};

const MAX_HEADER: usize = 16 + MAX_PREAMBLE;

fuzz_target!(|data: &[u8]| {
    match scan(data) {
        Ok(Scan::Native) | Err(_) => {}
        Ok(Scan::NeedMore(want)) => {
            assert!(want > data.len(), "need {want} with {} given", data.len());
            assert!(want <= MAX_HEADER);
        }
        Ok(Scan::Parsed { addresses, len }) => {
            assert!(len <= data.len() && len <= MAX_HEADER);
            // Every prefix shorter than the header asks for more, never parses.
            assert!(matches!(scan(&data[..len - 1]), Ok(Scan::NeedMore(_))));
            if let Some((src, dst)) = addresses {
                let again = preamble(src, dst).expect("re-emit");
                match scan(&again) {
                    Ok(Scan::Parsed {
                        addresses: back,
                        len,
                    }) => {
                        assert_eq!(len, again.len());
                        assert_eq!(back, Some((src, dst)));
                    }
                    other => panic!("re-emitted preamble does not parse: {other:?}"),
                }
            }
        }
    }
});
