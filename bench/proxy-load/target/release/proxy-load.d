/work/wt/egress/bench/proxy-load/target/release/proxy-load: /work/wt/egress/bench/proxy-load/src/main.rs
