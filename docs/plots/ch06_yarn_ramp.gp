# Caption: Chapter 6: YaRN's ramp on DeepSeek-V3's 32 rotary pairs, as the code computes it (yarn_ramp in rope.cpp): pairs up to low keep their frequency, pairs from high on are divided by the factor (40), the ones between blend; right axis: the factor by which each pair's frequency is multiplied
# Data: ch06_yarn_frequencies.csv (ch06_decoupled_rope): pair, freq, ramp, yarn_freq
load "style.gp"
data = datadir."/ch06_yarn_frequencies.csv"
# low: the last pair whose ramp is 0; high: the first whose ramp is 1 (read from the data, so
# the marks are the code's numbers, not a second copy of its formula).
stats data using (column("ramp") == 0 ? column("pair") : NaN) name "LOW" nooutput
stats data using (column("ramp") >= 1 ? column("pair") : NaN) name "HIGH" nooutput
low = LOW_max
high = HIGH_min
set xlabel "rotary pair i (frequency f_i = θ^{-2i/d})"
set ylabel "ramp r_i"
set yrange [-0.05:1.12]
set y2label "new frequency / old frequency"
set logscale y2 10
set y2range [0.02:1.3]
set y2tics nomirror ("1" 1, "1/2" 0.5, "1/5" 0.2, "1/10" 0.1, "1/40" 0.025)
set ytics nomirror 0, 0.25, 1
set xrange [-0.5:31.5]
set grid xtics ytics lc rgb "#dddddd"
set tmargin 3
set key at screen 0.5, screen 0.995 center top horizontal font ",10" samplen 2
set arrow from low, graph 0 to low, graph 1 nohead lc rgb "#999999" dt 2
set arrow from high, graph 0 to high, graph 1 nohead lc rgb "#999999" dt 2
set label sprintf("low = %d", low) at low, graph 0.78 right offset -0.5,0 font ",10" tc rgb "#555555"
set label sprintf("high = %d", high) at high, graph 0.3 left offset 0.5,0 font ",10" tc rgb "#555555"
set label "keep" at (low - 0.5) / 2, graph 0.5 center font ",11" tc rgb c_plain
set label "blend" at (low + high) / 2.0 + 2, graph 0.18 center font ",11" tc rgb "#555555"
set label "divide by the factor" at (high + 31) / 2.0 + 0.5, graph 0.55 center font ",11" tc rgb c_mla
plot data using "pair":"ramp" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_cached title "ramp r_i (0: keep, 1: divide)", \
     data using "pair":(column("yarn_freq") / column("freq")) axes x1y2 with linespoints pt 6 ps 0.6 lw 1.5 lc rgb c_mla title "f'_i / f_i = 1 - r_i + r_i / factor"
