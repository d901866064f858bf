# Caption: Chapter 3: KV-cache bytes per token (all layers, 16-bit numbers) of real model configurations, beside what the same model would cache with a key and a value for every head (log scale; the label is the saving)
# Data: ch03_cache_per_token.csv (ch03_multi_head): model, kind, bytes_per_token, mha_equivalent_bytes, ratio
load "style.gp"
data = datadir."/ch03_cache_per_token.csv"
set terminal svg size 760,480 dynamic enhanced font "DejaVu Sans,12" background rgb "white"
set output outfile
kind_color(k) = k eq "MLA" ? 0x55a868 : k eq "GQA" ? 0xdd8452 : k eq "MQA" ? 0x8172b3 : 0x4c72b0
set logscale y 10
set yrange [10000:3e7]
set format y "%.0s %cB"
set ylabel "KV cache per token (bytes, all layers)"
set xtics rotate by 20 right nomirror
set xrange [-0.6:*]
set boxwidth 0.36
set style fill solid 0.9 noborder
set key top left horizontal maxcols 4 box lc rgb "#cccccc" samplen 1.5
# Legend entries: one per kind, drawn as empty plots.
plot data using ($0 - 0.19):"mha_equivalent_bytes" with boxes lc rgb "#c9d3e6" title "the same model as MHA", \
     data using ($0 + 0.19):"bytes_per_token":(kind_color(strcol("kind"))):xtic(1) with boxes lc rgb variable notitle, \
     data using ($0 + 0.19):"bytes_per_token":(sprintf("%.0fx", column("ratio"))) with labels offset 0,0.7 font ",10" notitle, \
     NaN with boxes lc rgb c_plain title "MHA", \
     NaN with boxes lc rgb c_cached title "GQA", \
     NaN with boxes lc rgb c_mla title "MLA"
