# Caption: Chapter 8: decode throughput (generated tokens per second) against the number of sequences decoded together, for the MHA, GQA and MLA twins of one model under one KV-cache budget and context; each line ends (large mark) where that variant's caches fill the budget — MLA's smaller cache lets it run the most sequences at once
# Data: ch08_throughput.csv (ch08_serving --bench): variant, dtype, batch, max_sequences, tokens_per_s, ms_per_step, predicted_ms_per_step
load "style.gp"
data = datadir."/ch08_throughput.csv"
set logscale xy 2
set format x "%g"
set format y "%g"
set xlabel "sequences decoded together (batch)"
set ylabel "generated tokens per second"
set key top left Left reverse box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
V(i) = word("mha gqa8 gqa4 mla mla", i)
D(i) = word("f32 f32 f32 f32 bf16", i)
C(i) = word(c_plain." ".c_cached." ".c_mqa." ".c_mla." ".c_mla, i)
T(i) = i == 1 ? "MHA (16 KV heads)" : i == 2 ? "GQA, 8 KV heads" : i == 3 ? "GQA, 4 KV heads" : \
       i == 4 ? "MLA, fp32 latent" : "MLA, bf16 latent"
DT(i) = i == 5 ? 2 : 1
is(i) = strcol("variant") eq V(i) && strcol("dtype") eq D(i)
pick(i, col) = is(i) ? column(col) : NaN
# The largest batch the budget holds: where the variant runs out of memory.
last(i, col) = (is(i) && column("batch") == column("max_sequences")) ? column(col) : NaN
plot for [i = 1:5] data using (pick(i, "batch")):(pick(i, "tokens_per_s")) \
       with linespoints pt 7 ps 0.6 lw 2 dashtype DT(i) lc rgb C(i) title T(i), \
     for [i = 1:5] data using (last(i, "batch")):(last(i, "tokens_per_s")) \
       with points pt 9 ps 1.8 lc rgb C(i) notitle, \
     NaN with points pt 9 ps 1.8 lc rgb "#444444" title "largest batch the KV budget holds"
