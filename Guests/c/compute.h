/* The one thing compute.c needs from its platform: a byte of output. */
void put_char(char c);
void compute(void);
/* transcendental.c (built with -ffast-math: inline x87 transcendentals) prints through
 * compute.c's printer. */
void put_long_double(const char *name, long double x);
void transcendental(const double *inputs, int count);
