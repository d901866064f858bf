# Caption: The trained MHA model converted to MLA without training (chapters/tools' mha_to_mla): validation bits per byte against the cache per token (F32, all 4 layers, log scale), one line per RoPE choice PAIRS:DIRECTIONS, one point per latent rank r = 8, 16, 32, 64, 128 (left to right); stars: conversions after a 100-step fine-tune (train.py --finetune-from), the cross: the MHA model after the same 100 steps; grey rings: the five models trained from scratch (data/models/models_quality.csv, seed 0)
# Data: mha_to_mla.csv (mha_to_mla --finetuned ...): attention, r, rope pairs, rope dirs, cache bytes/token, val bits/byte; models_quality.csv: variant, kv_bytes_per_token, val_bpb_seed0
load "style.gp"
data = datadir."/mha_to_mla.csv"
trained = datadir."/models_quality.csv"
# One series: the converted rows with this RoPE choice ("pairs:dirs").
is(kind, n, m) = strcol("attention") eq kind && strcol("rope pairs") eq n && strcol("rope dirs") eq m
x_of(kind, n, m) = is(kind, n, m) ? column("cache bytes/token") : NaN
set logscale x 2
set xrange [200:6000]
set xtics ("256" 256, "512" 512, "1024" 1024, "2048" 2048, "4096" 4096)
set yrange [1.9:4.4]
set xlabel "cache per token (bytes, F32, all layers)"
set ylabel "validation bits per byte (lower is better)"
set grid xtics ytics lc rgb "#dddddd"
set key at graph 0.98, graph 0.62 box lc rgb "#cccccc" font ",10"
# mla and mla_noq cache the same 1152 bytes, next to gqa's 1024: mla's name above on the left,
# gqa's on the left, the others' on the right.
up(v) = v eq "mla"
left(v) = v eq "gqa"
plot data using (x_of("converted", "8", "8")):"val bits/byte" with linespoints pt 7 ps 0.8 lw 2 \
          lc rgb c_plain title "8:8 every rotation kept (cache r + 128)", \
     data using (x_of("converted", "5", "8")):"val bits/byte" with linespoints pt 7 ps 0.8 lw 2 \
          lc rgb c_mla title "5:8 the 3 slowest pairs unrotated (r + 80)", \
     data using (x_of("converted", "5", "4")):"val bits/byte" with linespoints pt 7 ps 0.8 lw 2 \
          lc rgb c_cached title "5:4 and 4 of 8 directions per pair (r + 40)", \
     data using (x_of("converted", "8", "1")):"val bits/byte" with linespoints pt 7 ps 0.8 lw 2 \
          lc rgb c_extra title "8:1 one direction per pair, as DeepSeek's k_{pe} (r + 16)", \
     data using (strcol("attention") eq "fine-tuned" ? column("cache bytes/token") : NaN):"val bits/byte" \
          with points pt 3 ps 2 lw 2 lc rgb "#222222" title "converted, then 100 steps of fine-tune", \
     data using (strcol("attention") eq "fine-tuned mha" ? column("cache bytes/token") : NaN):"val bits/byte" \
          with points pt 2 ps 1.6 lw 2 lc rgb "#222222" title "MHA itself after the same 100 steps", \
     trained using "kv_bytes_per_token":"val_bpb_seed0" with points pt 6 ps 1.6 lw 1.5 \
          lc rgb "#777777" title "trained from scratch (seed 0)", \
     trained using "kv_bytes_per_token":"val_bpb_seed0":(up(strcol(1)) ? strcol(1) : "") \
          with labels right offset -0.8,0.9 font ",9" tc rgb "#555555" noenhanced, \
     trained using "kv_bytes_per_token":"val_bpb_seed0":(left(strcol(1)) ? strcol(1) : "") \
          with labels right offset -1.2,-0.6 font ",9" tc rgb "#555555" noenhanced, \
     trained using "kv_bytes_per_token":"val_bpb_seed0":(up(strcol(1)) || left(strcol(1)) ? "" : strcol(1)) \
          with labels left offset 1.2,-0.6 font ",9" tc rgb "#555555" noenhanced
