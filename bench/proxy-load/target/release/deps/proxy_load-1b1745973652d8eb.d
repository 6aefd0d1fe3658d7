/work/wt/egress/bench/proxy-load/target/release/deps/proxy_load-1b1745973652d8eb.d: src/main.rs

/work/wt/egress/bench/proxy-load/target/release/deps/proxy_load-1b1745973652d8eb: src/main.rs

src/main.rs:
