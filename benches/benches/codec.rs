//! Codec encode, decode and size on a realistic profile, postcard (the
//! default) against bincode 2 and serde_json, plus the envelope's own cost.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use larder_benches::fixtures::{Profile, profile};
use larder_benches::manifest::{Better, Manifest};
use larder_core::envelope::{self, Compression, EnvelopeMeta};
use larder_core::{Bincode, Codec, Json, Postcard};

const SAMPLES: u64 = 64;

fn bench_codec<C: Codec>(c: &mut Criterion, m: &mut Manifest, codec: C, values: &[Profile]) {
    let name = codec.name();
    let encoded: Vec<Vec<u8>> = values.iter().map(|v| codec.encode(v).unwrap()).collect();
    let mean_size = encoded.iter().map(Vec::len).sum::<usize>() as f64 / encoded.len() as f64;
    m.value("codec/size", name, mean_size, "bytes", Better::Lower);

    for (group, f) in [
        ("codec/encode", 0),
        ("codec/decode", 1),
        ("codec/roundtrip", 2),
    ] {
        m.time(group, name, SAMPLES);
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(SAMPLES));
        g.bench_function(name, |b| match f {
            0 => b.iter(|| {
                for v in values {
                    black_box(codec.encode(black_box(v)).unwrap());
                }
            }),
            1 => b.iter(|| {
                for e in &encoded {
                    black_box(codec.decode::<Profile>(black_box(e)).unwrap());
                }
            }),
            _ => b.iter(|| {
                for v in values {
                    let bytes = codec.encode(black_box(v)).unwrap();
                    black_box(codec.decode::<Profile>(&bytes).unwrap());
                }
            }),
        });
        g.finish();
    }
}

fn codecs(c: &mut Criterion) {
    let mut m = Manifest::create("codec");
    let values: Vec<Profile> = (0..SAMPLES).map(profile).collect();
    bench_codec(c, &mut m, Postcard, &values);
    bench_codec(c, &mut m, Bincode, &values);
    bench_codec(c, &mut m, Json, &values);
    for group in [
        "codec/encode",
        "codec/decode",
        "codec/roundtrip",
        "codec/size",
    ] {
        m.compare(group, "postcard", "bincode");
        m.compare(group, "postcard", "serde_json");
    }

    // The envelope around a postcard payload: header write and read, with and
    // without LZ4 (which the profile is too small to benefit from).
    let meta = EnvelopeMeta::starting_at(
        1_700_000_000_000,
        Duration::from_secs(60),
        Duration::from_secs(30),
    );
    let mut g = c.benchmark_group("envelope/roundtrip");
    g.throughput(Throughput::Elements(1));
    for (id, compression) in [
        ("codec only", None),
        ("postcard", Some(Compression::None)),
        ("postcard+lz4", Some(Compression::Lz4 { min_size: 256 })),
    ] {
        m.time("envelope/roundtrip", id, 1);
        g.bench_function(id, |b| {
            b.iter_batched(
                || profile(7),
                |p| match compression {
                    None => {
                        let bytes = Postcard.encode(&p).unwrap();
                        black_box(Postcard.decode::<Profile>(&bytes).unwrap());
                    }
                    Some(c) => {
                        let bytes = envelope::encode_value(&Postcard, meta, Some(&p), c).unwrap();
                        black_box(envelope::decode_value::<_, Profile>(&Postcard, &bytes).unwrap());
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    m.compare("envelope/roundtrip", "postcard", "codec only");
}

criterion_group!(benches, codecs);
criterion_main!(benches);
