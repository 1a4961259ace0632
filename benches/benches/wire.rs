//! Wire-format micro-benchmarks: SAL header parse and emit (a SYN and a 12-byte data
//! header) and the Internet checksum over a full-size datagram.
//!
//! Run with `cargo bench -p serval-benches --bench wire`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serval_stack::wire::sal::{ControlFlags, ControlRepr, Packet, Protocol, SalRepr, ServiceRepr};
use serval_stack::wire::{FlowId, Nonce, ServiceId, checksum};

/// Our SYN: CONTROL, SERVICE and KEY_SHARE (104 header bytes).
fn syn() -> SalRepr {
    SalRepr {
        control: Some(ControlRepr {
            flags: ControlFlags::SYN,
            verno: 0x1122_3344,
            ackno: 0,
            nonce: Nonce([1, 2, 3, 4, 5, 6, 7, 8]),
        }),
        service: Some(ServiceRepr {
            dst: ServiceId::from_u32(16385),
            src: None,
        }),
        key_share: Some([0x42; 32]),
        ..SalRepr::new(FlowId::new(2), None, Protocol::TCP)
    }
}

/// A connected data header: no extension.
fn data() -> SalRepr {
    SalRepr::new(FlowId::new(0x0a0b_0c0d), FlowId::new(2), Protocol::TCP)
}

fn emitted(repr: &SalRepr) -> Vec<u8> {
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
    buf
}

fn sal(c: &mut Criterion) {
    let mut group = c.benchmark_group("sal");
    for (name, repr) in [("syn", syn()), ("data", data())] {
        let bytes = emitted(&repr);
        group.bench_function(format!("parse_{name}"), |b| {
            b.iter(|| SalRepr::parse(&Packet::new_unchecked(black_box(&bytes[..]))))
        });
        let mut out = vec![0u8; repr.buffer_len()];
        group.bench_function(format!("emit_{name}"), |b| {
            b.iter(|| black_box(&repr).emit(&mut Packet::new_unchecked(black_box(&mut out[..]))))
        });
    }
    group.finish();
}

fn internet_checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1500B", |b| b.iter(|| checksum::checksum(black_box(&data))));
    group.finish();
}

criterion_group!(benches, sal, internet_checksum);
criterion_main!(benches);
