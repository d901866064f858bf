# Caption: Chapter 5: when is absorption not worth it? Time of processing S new tokens against a cached context, absorbed divided by rebuilding K and V once for the chunk; below 1 absorbed wins (decode, small chunks), above 1 rebuilding wins (prefill)
# Data: ch05_prefill_chunk.csv (ch05_absorption): chunk S, absorbed/rebuild (time ratio)
load "style.gp"
data = datadir."/ch05_prefill_chunk.csv"
set logscale x 2
set xlabel "chunk length S (new tokens processed together)"
set ylabel "time absorbed / time rebuild"
set yrange [0:*]
set arrow from graph 0, first 1 to graph 1, first 1 nohead lc rgb "#999999" dt 2
set label "absorbed is faster below this line" at graph 0.03, first 0.93 font ",10" tc rgb "#555555"
set grid xtics ytics lc rgb "#dddddd"
plot data using "chunk S":"absorbed/rebuild" with linespoints pt 7 ps 0.7 lw 2 lc rgb c_mla notitle
