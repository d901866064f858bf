# Caption: The trained tiny models (data/models): validation bits per byte against the KV cache each caches per token (F32, all 4 layers, log scale); the dot is the mean over the seeds, the bar spans the lowest and the highest seed, the ring is seed 0 (the shipped model)
# Data: models_quality.csv (data/models/quality_table.py --csv): variant, kv_bytes_per_token, val_bpb_seed0, val_bpb_mean, val_bpb_sd, val_bpb_min, val_bpb_max, seeds
load "style.gp"
data = datadir."/models_quality.csv"
color(v) = v eq "mha" ? 0x4c72b0 : v eq "gqa" ? 0xdd8452 : v eq "mqa" ? 0x8172b3 : 0x55a868
# mla and mla_noq cache the same 1152 bytes, next to gqa's 1024: nudge them apart so every bar
# shows, and write mla's name on its left, the others' on their right.
nudge(v) = v eq "mla" ? 1.0 : v eq "mla_noq" ? 1.16 : 1.0
x(v) = column("kv_bytes_per_token") * nudge(v)
left(v) = v eq "mla" || v eq "gqa"
set logscale x 2
set xrange [360:6500]
set xtics ("512" 512, "1024" 1024, "2048" 2048, "4096" 4096)
set xlabel "KV cache per token (bytes, F32, all layers)"
set ylabel "validation bits per byte (lower is better)"
set grid xtics ytics lc rgb "#dddddd"
set offsets 0, 0, graph 0.1, graph 0.1
set key top right box lc rgb "#cccccc"
plot data using (x(strcol(1))):"val_bpb_mean":"val_bpb_min":"val_bpb_max":(color(strcol(1))) \
          with yerrorbars pt 7 ps 0 lw 2 lc rgb variable notitle, \
     data using (x(strcol(1))):"val_bpb_mean":(color(strcol(1))) with points pt 7 ps 1.3 \
          lc rgb variable notitle, \
     data using (x(strcol(1))):"val_bpb_seed0" with points pt 6 ps 1.8 lw 1.5 lc rgb "#444444" \
          notitle, \
     data using (x(strcol(1))):"val_bpb_mean":(left(strcol(1)) ? strcol(1) : "") \
          with labels right offset -1.6,0 font ",11" noenhanced, \
     data using (x(strcol(1))):"val_bpb_mean":(left(strcol(1)) ? "" : strcol(1)) \
          with labels left offset 1.6,0 font ",11" noenhanced, \
     NaN with points pt 7 ps 1.3 lc rgb "#777777" title "mean over seeds (bar: lowest to highest)", \
     NaN with points pt 6 ps 1.8 lw 1.5 lc rgb "#444444" title "seed 0 (the shipped model)"
