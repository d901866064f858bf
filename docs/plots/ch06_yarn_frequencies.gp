# Caption: Chapter 6: YaRN on DeepSeek-V3's rotary dimensions. Wavelength of each rotary pair before and after YaRN (log scale): pairs that turn many times within the original context keep their frequency, pairs that turn less than once are stretched by the scaling factor, the ones between blend (ramp, right axis)
# Data: ch06_yarn_frequencies.csv (ch06_decoupled_rope): pair, freq, ramp, yarn_freq
load "style.gp"
data = datadir."/ch06_yarn_frequencies.csv"
two_pi = 2 * pi
set logscale y 10
set format y "10^{%L}"
set xlabel "rotary pair i"
set ylabel "wavelength 2π / frequency (tokens)"
set y2label "ramp (0: keep, 1: divide by the factor)"
set y2range [-0.05:1.05]
set autoscale xfix
set y2tics 0, 0.25, 1 nomirror
set ytics nomirror
set key top left box lc rgb "#cccccc"
set grid xtics ytics lc rgb "#dddddd"
plot data using "pair":(two_pi / column("freq")) with linespoints pt 7 ps 0.5 lw 2 lc rgb c_plain title "RoPE", \
     data using "pair":(two_pi / column("yarn_freq")) with linespoints pt 7 ps 0.5 lw 2 lc rgb c_mla title "RoPE with YaRN", \
     data using "pair":"ramp" axes x1y2 with lines lw 1.5 dt 2 lc rgb "#999999" title "ramp"
