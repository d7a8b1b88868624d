# bench/plot.gp — the plot of BENCHMARKS.md: durable msgs/s by body size (cmtpd, Postfix+STARTTLS,
# Redis SET; median with min..max) and the latency CDFs of the open-loop runs. Data files come
# from bench/report.py; this script computes nothing.
# Use: gnuplot -e "datadir='DIR'; outfile='BENCHMARKS.png'" bench/plot.gp
if (!exists("datadir")) datadir = "."
if (!exists("outfile")) outfile = "BENCHMARKS.png"

set terminal pngcairo size 1400,560 font "sans,11"
set output outfile
set datafile missing "?"
set multiplot layout 1,2 title "CMTP appliance vs references (same run, loopback, shared VM)"

# Left: msgs/s by body size, log scale.
set title "durable msgs/s, persistent TLS sessions"
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y
set yrange [1:*]
set ylabel "messages per second (log)"
unset xlabel
set grid ytics
set key outside bottom center horizontal
plot datadir."/throughput.dat" using 2:3:4:xtic(1) title "cmtpd (CMTP)" lc rgb "#1f77b4", \
     '' using 5:6:7 title "Postfix + STARTTLS" lc rgb "#d62728", \
     '' using 8:9:10 title "Redis SET (AOF always)" lc rgb "#7f7f7f"

# Right: latency CDF (scheduled arrival to durable ack), open loop at 50 % and 90 % of our max.
unset style
set style data lines
unset logscale y
set logscale x
set xrange [*:*]
set yrange [0:1.02]
set title "latency to durable ack, 1 KiB, open loop (CDF)"
set xlabel "milliseconds (log)"
set ylabel "fraction of messages"
set key inside bottom right
set grid xtics ytics
plot datadir."/lat50.dat" using ($1/1000.0):3 with steps lw 2 lc rgb "#1f77b4" title "cmtpd at 50 % of max", \
     datadir."/lat90.dat" using ($1/1000.0):3 with steps lw 2 lc rgb "#ff7f0e" title "cmtpd at 90 % of max", \
     datadir."/redislat.dat" using ($1/1000.0):2 with points pt 7 ps 1.5 lc rgb "#7f7f7f" title "Redis SET 1 KiB p50, p99 (closed loop)"
unset multiplot
