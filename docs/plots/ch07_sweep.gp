# Caption: Chapter 7: the decode goals' map: % of this machine's limit (the FMA peak where the step is compute-bound, the read bandwidth where it is memory-bound: H ≤ 4) per shape, for the fp32 kernels (v5, v8) and the bf16 ones (v6, v9), on the most threads measured; one row per kernel, heads and batch, one column per context length; the goal is ≥ 85% everywhere (green)
# Data: ch07_sweep.csv (mla_bench --sweep): impl, dtype, batch, heads, context, threads, ms, gflops, gbps, bound, pct_peak; rows "peak" hold the machine's limits
load "style.gp"
data = datadir."/ch07_sweep.csv"

# Only the fast kernels, on the most threads measured.
stats data using (strcol("impl") eq "peak" ? column("threads") : NaN) name "TH" nooutput
max_threads = TH_max
impl_row(s) = s eq "v5" ? 0 : s eq "v8" ? 1 : s eq "v6" ? 2 : s eq "v9" ? 3 : -1
head_row(h) = h == 1 ? 0 : h == 4 ? 1 : h == 16 ? 2 : h == 32 ? 3 : h == 64 ? 4 : h == 128 ? 5 : -1
keep(dummy) = impl_row(strcol("impl")) >= 0 && column("threads") == max_threads && \
              head_row(column("heads")) >= 0
# Row: batch, then kernel, then heads (6 head rows per kernel, 4 kernels per batch).
row(dummy) = keep(0) ? (column("batch") > 1 ? 24 : 0) + 6 * impl_row(strcol("impl")) + \
                       head_row(column("heads")) : NaN
col(dummy) = log(column("context")) / log(2)

stats data using (keep(0) ? row(0) : NaN) name "R" nooutput
stats data using (keep(0) ? col(0) : NaN) name "C" nooutput
n_rows = R_max + 1
set terminal svg size 760, 160 + 16 * n_rows dynamic enhanced font "DejaVu Sans,11" background rgb "white"
set output outfile

set xrange [C_min - 0.5 : C_max + 0.5]
set yrange [R_max + 0.5 : R_min - 0.5]
set xtics 1 format ""
do for [e = int(C_min) : int(C_max)] {
  set xtics add (sprintf("%dK", 2**e / 1024) e)
}
set ytics 1 format "" font ",9"
kernels = "v5 v8 v6 v9"
dtypes = "f32 f32 bf16 bf16"
heads = "1 4 16 32 64 128"
do for [r = int(R_min) : int(R_max)] {
  b = r >= 24 ? 4 : 1
  k = (r % 24) / 6 + 1
  h = r % 6 + 1
  set ytics add (sprintf("%s %s H=%s B=%d", word(kernels, k), word(dtypes, k), word(heads, h), b) r)
}
set grid noytics
set border 0
set tics scale 0
set xlabel "cached tokens T"
set cbrange [40:100]
set cblabel "% of the limit (FMA peak, or read bandwidth where H ≤ 4)"
# Red below 70%, yellow around 80%, green from the goal of 85% up.
set palette defined (40 "#c44e52", 70 "#e8a33d", 85 "#55a868", 100 "#2f7d4a")
plot data using (col(0)):(row(0)):(0.5):(0.5):(column("pct_peak")) \
          with boxxyerror fs solid 1.0 noborder lc palette notitle, \
     data using (col(0)):(row(0)):(sprintf("%.0f", column("pct_peak"))) \
          with labels font ",9" tc rgb "#111111" notitle
