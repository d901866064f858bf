# Caption: Chapter 7: the decode goals' map: % of this machine's limit (the FMA peak where the step is compute-bound, the read bandwidth where it is memory-bound: H ≤ 4) per shape, for each cache type's first fast kernel and its fastest (fp32 v5 and v10, bf16 v6 and v12, FP8 v7 and v13), on the most threads measured; one row per kernel, heads and batch, one column per context length; the goal is ≥ 85% everywhere (green)
# Data: ch07_sweep.csv (mla_bench --sweep): impl, dtype, batch, heads, context, threads, ms, gflops, gbps, bound, pct_peak; rows "peak" hold the machine's limits
load "style.gp"
data = datadir."/ch07_sweep.csv"

# Only the fast kernels, on the most threads measured.
stats data using (strcol("impl") eq "peak" ? column("threads") : NaN) name "TH" nooutput
max_threads = TH_max
# The kernels shown, one block of rows each, in this order (with their cache types).
kernels = "v5 v10 v6 v12 v7 v13"
dtypes = "f32 f32 bf16 bf16 fp8 fp8"
n_k = words(kernels)
impl_row(s) = (sum [i = 1 : n_k] (word(kernels, i) eq s ? i : 0)) - 1
# The head counts the sweep measured (--quick measures fewer): a row each, in this order.
heads = "1 4 16 32 64 128"
array slot[6]
n_heads = 0
do for [i = 1 : 6] {
  stats data using (strcol("impl") ne "peak" && column("heads") == word(heads, i) + 0 ? 1 : 0) \
      name "P" nooutput
  slot[i] = P_sum > 0 ? n_heads : -1
  if (P_sum > 0) { n_heads = n_heads + 1; shown = (i == 1 ? "" : shown) . word(heads, i) . " " }
}
head_row(h) = h == 1 ? slot[1] : h == 4 ? slot[2] : h == 16 ? slot[3] : h == 32 ? slot[4] : \
              h == 64 ? slot[5] : h == 128 ? slot[6] : -1
keep(dummy) = impl_row(strcol("impl")) >= 0 && column("threads") == max_threads && \
              head_row(column("heads")) >= 0
# Row: batch, then kernel, then heads (n_heads rows per kernel, n_k kernels per batch).
row(dummy) = keep(0) ? (column("batch") > 1 ? n_k * n_heads : 0) + \
                       n_heads * impl_row(strcol("impl")) + head_row(column("heads")) : NaN
# Columns: the context lengths measured, in order (2^10 .. 2^16 tokens).
array cslot[7]
n_cols = 0
do for [e = 10 : 16] {
  stats data using (strcol("impl") ne "peak" && column("context") == 2**e ? 1 : 0) name "Q" nooutput
  cslot[e - 9] = Q_sum > 0 ? n_cols : -1
  if (Q_sum > 0) { n_cols = n_cols + 1 }
}
col_of(t) = t >= 1024 && t <= 65536 ? cslot[int(log(t) / log(2) + 0.5) - 9] : -1
col(dummy) = col_of(column("context")) >= 0 ? col_of(column("context")) : NaN

stats data using (keep(0) ? row(0) : NaN) name "R" nooutput
stats data using (keep(0) ? col(0) : NaN) name "C" nooutput
n_rows = R_max + 1
set terminal svg size 760, 160 + 16 * n_rows dynamic enhanced font "DejaVu Sans,11" background rgb "white"
set output outfile

set xrange [C_min - 0.5 : C_max + 0.5]
set yrange [R_max + 0.5 : R_min - 0.5]
set xtics 1 format ""
do for [e = 10 : 16] {
  if (cslot[e - 9] >= 0) { set xtics add (sprintf("%dK", 2**e / 1024) cslot[e - 9]) }
}
set ytics 1 format "" font ",9"
do for [r = int(R_min) : int(R_max)] {
  b = r >= n_k * n_heads ? 4 : 1
  k = (r % (n_k * n_heads)) / n_heads + 1
  h = r % n_heads + 1
  set ytics add (sprintf("%s %s H=%s B=%d", word(kernels, k), word(dtypes, k), word(shown, h), b) r)
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
