# Caption: Chapter 7: the roofline of this machine (measured FMA peak and DRAM read bandwidth, on 1 thread and on all threads) with every decode kernel of mla_bench on it, for DeepSeek-V3's shape (128 heads, latent 512 + rope 64, 4,096 cached tokens); absorbed MLA sits far right (compute-bound), MHA far left (memory-bound)
# Data: ch07_kernels.csv (mla_bench --json): impl, dtype, threads, gflops, gbps; rows "peak" hold the machine's limits
load "style.gp"
data = datadir."/ch07_kernels.csv"
set terminal svg size 760,500 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile

# The machine's limits: the "peak" rows, on 1 thread and on the most threads measured.
is_peak(t) = strcol("impl") eq "peak" && (t == 0 || column("threads") == t)
stats data using (is_peak(0) ? column("threads") : NaN) name "TH" nooutput
max_threads = TH_max
stats data using (is_peak(1) ? column("gflops") : NaN) name "F1" nooutput
stats data using (is_peak(1) ? column("gbps") : NaN) name "B1" nooutput
stats data using (is_peak(max_threads) ? column("gflops") : NaN) name "FN" nooutput
stats data using (is_peak(max_threads) ? column("gbps") : NaN) name "BN" nooutput
roof(x, flops, gbps) = (x * gbps < flops) ? x * gbps : flops

family(s) = s[1:3] eq "mha" ? 3 : s eq "blas" ? 2 : 1
point_color(s, dt) = family(s) == 3 ? 0x8172b3 : family(s) == 2 ? 0xdd8452 : dt eq "bf16" ? 0x55a868 : 0x4c72b0

set logscale xy 10
set xrange [0.1:1000]
set yrange [0.5:2 * (F1_max > FN_max ? F1_max : FN_max)]
set format x "%g"
set format y "%g"
set xlabel "arithmetic intensity (FLOP per byte read)"
set ylabel "GFLOP/s"
set grid xtics ytics lc rgb "#dddddd"
set key bottom right box lc rgb "#cccccc"
set samples 400
kernel(col) = strcol("impl") eq "peak" ? NaN : column(col)
# Labels sit right of their point, except where kernels crowd at the same intensity: the
# multi-threaded fp32 decode kernels get theirs on the left, the BLAS one below.
side(dummy) = strcol("impl") eq "blas" ? 0 : (column("threads") > 1 && strcol("dtype") eq "f32") ? -1 : 1
label(s, t) = t > 1 ? sprintf("%s (%d threads)", s, t) : s
at(where) = side(0) == where ? kernel("gflops") : NaN
x_of(dummy) = kernel("gflops") / column("gbps")
plot roof(x, FN_max, BN_max) with lines lw 2 lc rgb "#444444" title sprintf("roof, %d threads", max_threads), \
     roof(x, F1_max, B1_max) with lines lw 1.5 dt 2 lc rgb "#888888" title "roof, 1 thread", \
     data using (x_of(0)):(kernel("gflops")):(point_color(strcol("impl"), strcol("dtype"))) \
          with points pt 7 ps 1.0 lc rgb variable notitle, \
     data using (x_of(0)):(at(1)):(label(strcol("impl"), column("threads"))) \
          with labels left offset 0.8,0 font ",10" noenhanced notitle, \
     data using (x_of(0)):(at(-1)):(label(strcol("impl"), column("threads"))) \
          with labels right offset -0.8,0 font ",10" noenhanced notitle, \
     data using (x_of(0)):(at(0)):(label(strcol("impl"), column("threads"))) \
          with labels center offset 0,-1 font ",10" noenhanced notitle
