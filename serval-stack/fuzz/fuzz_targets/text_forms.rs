//! Operator text: ServiceID and prefix forms and DNS names never panic, and whatever parses
//! prints to a form that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serval_stack::wire::{ServiceId, ServicePrefix, name};

fuzz_target!(|s: &str| {
    if let Ok(id) = s.parse::<ServiceId>() {
        assert_eq!(id.to_string().parse::<ServiceId>(), Ok(id));
    }
    if let Ok(prefix) = s.parse::<ServicePrefix>() {
        assert_eq!(prefix.to_string().parse::<ServicePrefix>(), Ok(prefix));
    }
    if let Ok(id) = name::service_id_for_name(s) {
        let normalized = name::normalize(s).expect("a name that maps also normalises");
        assert_eq!(name::service_id_for_name(&normalized), Ok(id));
        let provider = name::provider_prefix(s).expect("same validation as the id");
        assert!(provider.contains(&id));
    }
});
